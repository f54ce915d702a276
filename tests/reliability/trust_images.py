"""Issue 23, images: one photo reader and one mask reader (utils.images) for every tool.

``before`` is what commit 3d0908f did, measured by running these inputs through its code: retrieval read 16-bit
photos with ``convert("RGB")`` (every value above 255 clipped: different photos, the same white image); the
datamodules read float images as black and ignored EXIF orientation where the visualisation tools applied it;
the fast extraction loader decoded every frame of an animated GIF and failed in torch.stack; visualize.oneshot refused a grey+alpha mask
of the right size, saying "451x300 pixels but its image is 451x300". Truncated, empty and text files were
already refused naming the file (kept as regression cases).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import TINY, TINY_SAM
from tests.reliability import Case, Result

TINY_FLAGS = tuple(f"--{key.replace('_', '-')}={value}" for key, value in TINY.items())
SAM_FLAGS = tuple(f"--sam-{key.replace('_', '-')}={value}" for key, value in TINY_SAM.items())
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """A scikit-image photograph at ``size`` = (W, H): ``(H, W, 3)`` uint8."""
    from skimage import data

    return np.asarray(Image.fromarray(getattr(data, name)()).convert("RGB").resize(size, Image.BICUBIC))


def sixteen_bit(name: str) -> np.ndarray:
    """The photograph in grey at 16 bits (value * 257): ``(H, W)`` uint16."""
    return np.asarray(Image.fromarray(photo(name)).convert("L")).astype(np.uint16) * 257


def sixteen_bit_photos(tmp: Path) -> None:
    (tmp / "photos").mkdir()
    for name in PHOTOS:
        Image.fromarray(sixteen_bit(name)).save(tmp / "photos" / f"{name}.png")


def distinct_vectors(tmp: Path, result: Result) -> None:
    from retrieval.index_store import open_index

    vectors = open_index(tmp / "index").vectors().astype(np.float64)
    scores = vectors @ vectors.T
    assert scores[~np.eye(len(PHOTOS), dtype=bool)].max() < 0.999, f"16-bit photos embed alike:\n{scores}"


def bad_file(kind: str) -> object:
    """A photo a.png for the visualize CLIs, and ``bad.png``: truncated, empty or text."""

    def setup(tmp: Path) -> None:
        Image.fromarray(photo("chelsea")).save(tmp / "a.png")
        data = (tmp / "a.png").read_bytes()
        content = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not an image\n"}[kind]
        (tmp / "bad.png").write_bytes(content)

    return setup


def grey_alpha_mask(tmp: Path) -> None:
    """chelsea.png, its mask as a grey+alpha PNG (grey 0/255, alpha opaque), and a target."""
    cat = photo("chelsea")
    Image.fromarray(cat).save(tmp / "chelsea.png")
    Image.fromarray(cat[:, ::-1].copy()).save(tmp / "target.png")
    mask = np.zeros(cat.shape[:2], np.uint8)
    mask[16:48, 24:72] = 255
    Image.fromarray(np.dstack([mask, np.full_like(mask, 255)])).save(tmp / "mask_la.png")


def mask_written(tmp: Path, result: Result) -> None:
    assert (tmp / "out" / "target_mask.png").is_file(), result.text


def animated_gif_fast_extraction(tmp: Path) -> None:
    """The fast extraction loader over an animated GIF and a PNG: the GIF's first frame, as the photo reader reads it
    (3d0908f: torchvision decoded every frame, and the batch failed in torch.stack)."""
    from datamodules.image_files import ImageFileLoader
    from utils.images import read_rgb

    frames = [Image.fromarray(np.roll(photo("coffee"), 30 * k, axis=1)).convert("P") for k in range(3)]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.fromarray(read_rgb(tmp / "anim.gif")).save(tmp / "first_frame.png")
    loader = ImageFileLoader([tmp / "anim.gif", tmp / "first_frame.png"], size=28, batch_size=2, num_workers=0)
    (_, batch), *_ = list(loader)
    assert batch.shape == (2, 3, 28, 28) and np.array_equal(batch[0].numpy(), batch[1].numpy()), batch.shape


def float_tiff_dataset_image(tmp: Path) -> None:
    from datamodules.files import load_image

    grey = np.asarray(Image.fromarray(photo("coffee")).convert("L"))
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp / "float.tif")
    got = load_image(tmp / "float.tif")
    assert np.abs(got[..., 0].astype(int) - grey).max() <= 1, "a [0, 1] float image read wrongly"


def exif_rotated_dataset_image(tmp: Path) -> None:
    from datamodules.files import load_image
    from visualize.images import load_rgb

    upright = Image.fromarray(photo("coffee"))
    tags = Image.Exif()
    tags[0x0112] = 6  # view turned 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp / "rotated.png", exif=tags)
    got = load_image(tmp / "rotated.png")
    assert np.array_equal(got, np.asarray(upright)), "the dataset reads the photo unrotated"
    assert np.array_equal(got, np.asarray(load_rgb(tmp / "rotated.png", 14))), "datasets and visualize disagree"


def sixteen_bit_bsds500(tmp: Path) -> None:
    from datamodules.sam.bsds500 import BSDS500Images, write_boundaries

    grey = sixteen_bit("astronaut")
    Image.fromarray(grey).save(tmp / "0.png")
    write_boundaries(tmp / "0.mat", [np.zeros(grey.shape, np.uint8)])
    image = BSDS500Images([(tmp / "0.png", tmp / "0.mat")])[0]["image"]
    assert np.array_equal(image[..., 0], (grey >> 8).astype(np.uint8)), "16-bit values clipped"


def truncated_dataset_jpeg(tmp: Path) -> object:
    from datamodules.files import load_image

    Image.fromarray(photo("coffee")).save(tmp / "photo.jpg", quality=95)
    data = (tmp / "photo.jpg").read_bytes()
    (tmp / "photo.jpg").write_bytes(data[: len(data) // 2])
    return load_image(tmp / "photo.jpg")


def colour_label(tmp: Path) -> object:
    from datamodules.files import load_label, make_label_map

    Image.fromarray(photo("coffee")).save(tmp / "label.png")
    return load_label(tmp / "label.png", make_label_map({0: 0}, "0"), tmp / "photo.jpg", (64, 96))


VISUALIZE = ("--out", "{tmp}/o.png", "--checkpoint", "{tiny}", *TINY_FLAGS, "--device", "cpu", "--size", "56")

CASES = [
    # the adversary's case: four different 16-bit photos indexed as one white image (query scored them 1.0)
    Case(
        "images-16bit-photos-retrieval-index",
        "silent",
        argv=(
            "-m",
            "retrieval",
            "index",
            "{tmp}/photos",
            "--out",
            "{tmp}/index",
            "--checkpoint",
            "{tiny}",
            *TINY_FLAGS,
            "--size",
            "56",
            "--num-workers",
            "0",
            "--device",
            "cpu",
        ),
        setup=sixteen_bit_photos,
        check=distinct_vectors,
        exit_code=0,
    ),
    Case("images-16bit-bsds500", "silent", call=sixteen_bit_bsds500, exit_code=0),
    Case("images-float-tiff-dataset", "silent", call=float_tiff_dataset_image, exit_code=0),
    Case("images-exif-rotated-dataset", "silent", call=exif_rotated_dataset_image, exit_code=0),
    Case("images-animated-gif-fast-extraction", "traceback", call=animated_gif_fast_extraction, exit_code=0),
    # a valid mask refused with a false reason ("451x300 pixels but its image is 451x300"): a wrong result
    Case(
        "images-grey-alpha-oneshot-mask",
        "silent",
        argv=(
            "-m",
            "visualize.oneshot",
            "{tmp}/chelsea.png",
            "{tmp}/mask_la.png",
            "{tmp}/target.png",
            "--out",
            "{tmp}/out",
            "--checkpoint",
            "{tiny}",
            *TINY_FLAGS,
            "--random-weights",
            "--device",
            "cpu",
            "--size",
            "56",
            *SAM_FLAGS,
        ),
        setup=grey_alpha_mask,
        check=mask_written,
        exit_code=0,
    ),
    *(
        Case(
            f"images-{kind}-png-visualize",
            "clear",
            argv=("-m", "visualize.pca", "{tmp}/a.png", "{tmp}/bad.png", *VISUALIZE),
            setup=bad_file(kind),
            names=("{tmp}/bad.png",),
            absent=("o.png",),
        )
        for kind in ("truncated", "empty", "text")
    ),
    Case("images-truncated-jpeg-dataset", "clear", call=truncated_dataset_jpeg, names=("{tmp}/photo.jpg",)),
    Case("images-colour-label", "clear", call=colour_label, names=("{tmp}/label.png", "colour")),
]
