"""Image files -> normalised ``(B, 3, S, S)`` batches on the device, fast enough to keep a GPU backbone busy.

For feature extraction. Loader workers read each file's bytes and either decode and resize it on the CPU
(torchvision.io: libjpeg-turbo, libpng, libwebp) to uint8, or, with ``decode="gpu"``, pass JPEG bytes on
so that nvJPEG decodes the whole batch on the GPU (``torchvision.io.decode_jpeg(list, device="cuda")``).
Batches travel as pinned uint8 (a quarter of float32's bytes); on CUDA the copy, the GPU decode, the
resize and the normalisation of the next batch run on a side stream while the caller computes on this one.
Files torchvision cannot decode (BMP, CMYK JPEG, ...) fall back to PIL.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from datamodules.errors import DatasetError
from datamodules.files import image_size, load_image, upright_colour
from datamodules.loaders import available_cpus

JPEG_MAGIC = b"\xff\xd8\xff"
DECODERS = ("cpu", "gpu")


def read_bytes(path: Path) -> Tensor:
    """A file's bytes as a ``(N,)`` uint8 tensor; a clear error when it cannot be read."""
    try:
        return read_file(str(path))
    except RuntimeError as e:
        raise DatasetError(
            f"Cannot read image {path} ({e}). Check that the file exists and is readable, or remove it from the list."
        ) from None


def is_jpeg(data: Tensor) -> bool:
    """Whether ``(N,)`` uint8 bytes start with the JPEG marker."""
    return bytes(data[:3].tolist()) == JPEG_MAGIC


def decode_bytes(data: Tensor, path: Path) -> Tensor:
    """Encoded ``(N,)`` uint8 bytes -> ``(3, H, W)`` uint8 RGB on the CPU: `utils.images.read_rgb`'s pixels.

    torchvision decodes JPEG, PNG, WebP and GIF by the same rules (EXIF orientation, first frame, alpha dropped,
    16-bit ``>> 8``); anything else goes through `load_image`, which names a file it cannot read. PIL reads the
    header first to refuse a decompression bomb (torchvision has no size limit)."""
    image_size(path)
    try:
        image = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        return torch.tensor(load_image(path)).permute(2, 0, 1).contiguous()
    if image.ndim == 4:  # an animated GIF: (frames, 3, H, W)
        image = image[0]
    if image.dtype != torch.uint8:
        # 16-bit PNGs: keep the high byte, as utils.images.upright_rgb does
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def decode_file(path: str | os.PathLike) -> Tensor:
    """Read and decode one image file to ``(3, H, W)`` uint8 RGB."""
    return decode_bytes(read_bytes(Path(path)), Path(path))


def resize_crop(image: Tensor, size: int, resize_size: int | None = None) -> Tensor:
    """``(3, H, W)`` uint8 -> ``(3, size, size)`` uint8 (antialiased bilinear, on the image's device).

    ``resize_size`` None: the whole image is resized to ``size x size``. Else its shorter side becomes
    ``resize_size`` and the centre ``size x size`` is cropped (the official classification evaluation: 256, 224).
    """
    if resize_size is None:
        return TF.resize(image, [size, size], antialias=True)
    return TF.center_crop(TF.resize(image, resize_size, antialias=True), [size, size])


class ImageFiles(Dataset):
    """Image files -> ``{"index": int, "pixels": (3, S, S) uint8}``, or ``{"index": int, "jpeg": (N,) uint8}`` when
    ``gpu_jpeg`` is set and the file is a JPEG (decoded later, on the GPU, by ``ImageFileLoader``)."""

    def __init__(
        self, paths: Sequence[str | os.PathLike], size: int, resize_size: int | None = None, gpu_jpeg: bool = False
    ):
        self.paths = [Path(p) for p in paths]
        self.size, self.resize_size, self.gpu_jpeg = size, resize_size, gpu_jpeg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, int | Tensor]:
        path = self.paths[index]
        data = read_bytes(path)
        if self.gpu_jpeg and is_jpeg(data) and upright_colour(path):
            return {"index": index, "jpeg": data}
        return {"index": index, "pixels": resize_crop(decode_bytes(data, path), self.size, self.resize_size)}


@dataclass
class EncodedBatch:
    """A batch of ``ImageFiles`` items: CPU-decoded pixels and still-encoded JPEGs, each with its row in the batch.

    index: ``(B,)`` dataset indices; pixels: ``(P, 3, S, S)`` uint8 at rows ``pixel_rows`` ``(P,)``;
    jpegs: ``B - P`` encoded files at rows ``jpeg_rows``.
    """

    index: Tensor
    pixels: Tensor
    pixel_rows: Tensor
    jpegs: list[Tensor] = field(default_factory=list)
    jpeg_rows: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def pin_memory(self) -> EncodedBatch:
        """Called by the DataLoader's pin-memory thread; the JPEG bytes stay pageable (nvJPEG reads them on the host)."""
        self.pixels = self.pixels.pin_memory()
        return self


def collate_encoded(items: list[dict[str, int | Tensor]]) -> EncodedBatch:
    """``ImageFiles`` items -> one ``EncodedBatch``."""
    pixel_rows = [row for row, item in enumerate(items) if "pixels" in item]
    jpeg_rows = [row for row, item in enumerate(items) if "jpeg" in item]
    if pixel_rows:
        pixels = torch.stack([items[row]["pixels"] for row in pixel_rows])
    else:
        pixels = torch.zeros(0, dtype=torch.uint8)
    return EncodedBatch(
        index=torch.tensor([item["index"] for item in items], dtype=torch.long),
        pixels=pixels,
        pixel_rows=torch.tensor(pixel_rows, dtype=torch.long),
        jpegs=[items[row]["jpeg"] for row in jpeg_rows],
        jpeg_rows=torch.tensor(jpeg_rows, dtype=torch.long),
    )


def default_workers() -> int:
    """min(16, the CPUs this process may use)."""
    return min(16, available_cpus())


def check_loader_arguments(
    size: int,
    resize_size: int | None,
    batch_size: int,
    num_workers: int | None,
    prefetch_factor: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """ValueError naming the first `ImageFileLoader` argument out of range (the DataLoader would fail in a worker,
    torchvision at the first resize, or the normalisation divide by zero)."""
    least = {"size": 1, "resize_size": 1, "batch_size": 1, "num_workers": 0, "prefetch_factor": 1}
    values = {"size": size, "resize_size": resize_size, "batch_size": batch_size, "num_workers": num_workers}
    for name, value in (values | {"prefetch_factor": prefetch_factor}).items():
        if value is None and name in ("resize_size", "num_workers"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least[name]:
            raise ValueError(f"{name}={value!r}: give a whole number of at least {least[name]}.")
    if resize_size is not None and resize_size < size:
        raise ValueError(
            f"resize_size={resize_size} is smaller than size={size}: the centre crop would be padded with black. "
            f"Give resize_size >= size (e.g. 256 for 224), or None to resize whole images."
        )
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != 3 or not all(math.isfinite(v) for v in value) or (name == "std" and min(value) <= 0):
            raise ValueError(
                f"{name}={tuple(value)!r}: give 3 finite per-channel values (R, G, B){', each above 0' if name == 'std' else ''}."
            )


class ImageFileLoader:
    """Iterate ``(index (B,) int64 on the CPU, images (B, 3, S, S) on device)`` over image files, in file order.

    Images are ImageNet-normalised, in ``dtype`` (float32 by default; bfloat16 halves the device memory and
    suits a bf16 backbone). On CUDA, the next batch is copied (and decoded, with ``decode="gpu"``) on a side
    stream while the caller works on the current one.

    Args:
        paths: the image files.
        size: side ``S`` of the square outputs (a multiple of the patch size: 224, 518, ...).
        resize_size: None resizes whole images to ``S x S``; else shorter side to it, then centre crop ``S``.
        batch_size, num_workers (None: ``default_workers()``), prefetch_factor: the DataLoader's.
        decode: ``"cpu"`` (in the workers) or ``"gpu"`` (nvJPEG, for JPEG files; needs a CUDA device).
        device: where the batches go.
        dtype: of the returned images.
        mean, std: the normalisation (ImageNet's, as DINOv2 was trained with).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        size: int,
        resize_size: int | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
        decode: str = "cpu",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        prefetch_factor: int = 2,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ):
        check_loader_arguments(size, resize_size, batch_size, num_workers, prefetch_factor, mean, std)
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device={device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:N'.") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for but no CUDA GPU is available: use device='cpu'.")
        if decode not in DECODERS:
            raise ValueError(f"decode={decode!r} is not an option: use cpu (in the loader workers) or gpu (nvJPEG).")
        if decode == "gpu" and self.device.type != "cuda":
            raise ValueError(f"decode='gpu' needs a CUDA device, not {self.device}: use decode='cpu'.")
        if isinstance(paths, (str, os.PathLike)):
            raise ValueError(  # noqa: TRY004 (the API raises ValueError)
                f"paths={str(paths)!r} is one path; give a list of image files, e.g. [{str(paths)!r}]."
            )
        if not paths:
            raise DatasetError("The list of image files is empty: nothing to load.")
        if missing := next((p for p in paths if not Path(p).is_file()), None):
            raise DatasetError(f"Image file {missing} does not exist or is not a file: check the path, or remove it.")
        self.size, self.resize_size, self.dtype = size, resize_size, dtype
        self.dataset = ImageFiles(paths, size, resize_size, gpu_jpeg=decode == "gpu")
        workers = default_workers() if num_workers is None else num_workers
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_encoded,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=prefetch_factor if workers > 0 else None,
        )
        # (x / 255 - mean) / std as one multiply-add on the device
        self.scale = torch.tensor([1 / (255 * s) for s in std], device=self.device).view(1, 3, 1, 1)
        self.shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=self.device).view(1, 3, 1, 1)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.stream is None:
            for batch in self.loader:
                yield batch.index, self._to_images(batch)
            return
        # the side stream must see everything queued so far on the caller's stream (e.g. scale and shift)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        pending = None
        for batch in self.loader:
            with torch.cuda.stream(self.stream):
                ready = (batch.index, self._to_images(batch), torch.cuda.Event())
                ready[2].record(self.stream)
            if pending is not None:
                yield self._hand_over(*pending)
            pending = ready
        if pending is not None:
            yield self._hand_over(*pending)

    def _hand_over(self, index: Tensor, images: Tensor, done: torch.cuda.Event) -> tuple[Tensor, Tensor]:
        """Make the caller's stream wait until ``images`` are ready, and keep their memory alive for that stream."""
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        images.record_stream(current)
        return index, images

    def _to_images(self, batch: EncodedBatch) -> Tensor:
        """``EncodedBatch`` -> ``(B, 3, S, S)`` normalised ``dtype`` on the device."""
        if not batch.jpegs:
            pixels = batch.pixels.to(self.device, non_blocking=True)
        else:
            pixels = torch.empty((len(batch.index), 3, self.size, self.size), dtype=torch.uint8, device=self.device)
            decoded = self._decode_on_gpu(batch.jpegs, batch.index[batch.jpeg_rows].tolist())
            pixels[batch.jpeg_rows.to(self.device)] = torch.stack(
                [resize_crop(im, self.size, self.resize_size) for im in decoded]
            )
            if len(batch.pixel_rows):
                pixels[batch.pixel_rows.to(self.device)] = batch.pixels.to(self.device, non_blocking=True)
        return torch.addcmul(self.shift, pixels, self.scale).to(self.dtype)

    def _decode_on_gpu(self, jpegs: list[Tensor], indices: list[int]) -> list[Tensor]:
        """Encoded JPEGs -> ``(3, H, W)`` uint8 on the device; a batch nvJPEG refuses is redone file by file, on the CPU where needed."""
        try:
            return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            decoded = []
            for data, index in zip(jpegs, indices):
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    path = self.dataset.paths[index]
                    decoded.append(decode_bytes(data, path).to(self.device))
            return decoded
