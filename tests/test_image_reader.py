"""One photo reader and one mask reader (utils.images) for every tool: a folder of odd files (16-bit, float, CMYK,
palette with transparency, EXIF-rotated, grey+alpha, RGBA, animated GIF) reads the same pixels through every
entry point that reads photos, and the unreadable ones (truncated, empty, text) are refused naming the file.

Longer than 300 lines: the odd-file folder and the table of every entry point that reads photos, one short test each.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import DatasetError
from utils.errors import UserError
from utils.images import read_mask, read_rgb, rgb_image, upright_rgb

skimage_data = pytest.importorskip("skimage.data")

ORIENTATION = 0x0112
UNREADABLE = ("truncated.png", "truncated.jpg", "empty.png", "text.png")


def base_photo(name: str = "astronaut", size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """A real photograph, ``size`` = (W, H), not square so that a rotation shows: ``(H, W, 3)`` uint8."""
    return np.asarray(Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize(size, Image.BICUBIC))


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[ORIENTATION] = orientation
    return tags


def write_odd_images(folder: Path) -> dict[str, np.ndarray]:
    """Write the odd files under ``folder``; return what each readable one must read as, ``(H, W, 3)`` uint8
    (lossy ones, the JPEGs, within a tolerance checked by the test)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = base_photo()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    upright = Image.fromarray(rgb)
    expected: dict[str, np.ndarray] = {"rgb.png": rgb}
    upright.save(folder / "rgb.png")
    # 16 bits: the photo at 16-bit precision, its low byte filled (value * 257, the usual 8 -> 16 bit scaling)
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.png")
    expected["grey16.png"] = np.repeat(grey[..., None], 3, axis=2)
    Image.fromarray(grey.astype(np.float32) / 255).save(folder / "float.tif")
    expected["float.tif"] = expected["grey16.png"]
    upright.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = rgb
    palette = upright.convert("P")
    palette.save(folder / "palette.png", transparency=0)
    colours = np.asarray(palette.getpalette(), np.uint8).reshape(-1, 3)
    expected["palette.png"] = colours[np.asarray(palette)]
    # orientation 6: the viewer turns the stored pixels 90 degrees clockwise, so store them turned the other way
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    stored.save(folder / "exif6.jpg", quality=95, exif=exif(6))
    expected["exif6.jpg"] = rgb
    stored.save(folder / "exif6.png", exif=exif(6))
    expected["exif6.png"] = rgb
    Image.fromarray(np.dstack([grey, np.arange(grey.size, dtype=np.uint8).reshape(grey.shape)])).save(folder / "la.png")
    expected["la.png"] = expected["grey16.png"]
    Image.fromarray(np.dstack([rgb, np.full(grey.shape, 7, np.uint8)])).save(folder / "rgba.png")
    expected["rgba.png"] = rgb
    frames = [Image.fromarray(np.roll(rgb, 30 * k, axis=1)).convert("P") for k in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    frame_colours = np.asarray(frames[0].getpalette(), np.uint8).reshape(-1, 3)
    expected["anim.gif"] = frame_colours[np.asarray(frames[0])]
    png, jpeg = (folder / "rgb.png").read_bytes(), (folder / "exif6.jpg").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image\n")
    return expected


LOSSY = {"cmyk.jpg": 12.0, "exif6.jpg": 6.0}  # mean absolute error allowed, in levels, for the JPEGs


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("odd")
    return folder, write_odd_images(folder)


def test_the_reader_reads_each_odd_file_as_its_photo(odd) -> None:
    folder, expected = odd
    for name, pixels in expected.items():
        got = read_rgb(folder / name)
        assert got.dtype == np.uint8 and got.shape == pixels.shape, (name, got.shape, pixels.shape)
        error = np.abs(got.astype(int) - pixels).astype(float)
        if name in LOSSY:
            assert error.mean() < LOSSY[name], (name, error.mean())
        else:
            assert error.max() <= 1, (name, error.max())  # 16-bit: within one 8-bit level


def test_sixteen_bit_values_keep_their_range() -> None:
    """A dark 16-bit photo stays dark (dtype range, not its own min/max) and is not clipped to white."""
    dark = np.linspace(0, 4095, 64 * 48, dtype=np.uint16).reshape(48, 64)
    got = np.asarray(upright_rgb(Image.fromarray(dark)))
    assert np.array_equal(got[..., 0], (dark >> 8).astype(np.uint8)) and got.max() == 15


def test_unreadable_files_are_refused_naming_them(odd) -> None:
    folder, _ = odd
    for name in UNREADABLE:
        with pytest.raises(UserError, match=f"Cannot read image {folder / name}"):
            read_rgb(folder / name)


def entry_points(tmp: Path) -> dict[str, Callable[[Path], np.ndarray]]:
    """Every reader-facing data module and command helper that decodes a photo, as ``path -> (H, W, 3) uint8``.

    The data modules that pair an image with a mask or boundaries get one of the image's size (read by
    `read_rgb`), written beside it in ``tmp``."""
    from datamodules.files import load_image
    from datamodules.image_files import decode_file
    from datamodules.oneshot.readers import FolderReader
    from datamodules.retrieval.revisited import RevisitedImages
    from datamodules.sam.bsds500 import BSDS500Images, write_boundaries
    from datamodules.sam.interactive import LAYOUTS, InteractiveInstances
    from visualize.images import load_rgb

    def size_of(path: Path) -> tuple[int, int]:
        try:
            return read_rgb(path).shape[:2]
        except UserError:
            return (1, 1)

    def bsds(path: Path) -> np.ndarray:
        truth = tmp / "bsds" / f"{path.stem}.mat"
        truth.parent.mkdir(exist_ok=True)
        write_boundaries(truth, [np.zeros(size_of(path), np.uint8)])
        return BSDS500Images([(path, truth)])[0]["image"]

    def interactive(path: Path) -> np.ndarray:
        mask = tmp / "interactive" / f"{path.stem}.png"
        mask.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full(size_of(path), 255, np.uint8)).save(mask)
        return InteractiveInstances([(path, mask)], LAYOUTS["davis"])[0]["image"]

    def oneshot(path: Path) -> np.ndarray:
        mask = (tmp / "oneshot_masks" / path.name).with_suffix(".png")
        mask.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full(size_of(path), 255, np.uint8)).save(mask)
        return FolderReader(path.parent, mask.parent, ".png", 128).load(0, str(path))[0]

    def revisited(path: Path) -> np.ndarray:
        # the published layout names every image <name>.jpg; PIL reads the file by its content
        shutil.copyfile(path, tmp / "revisited" / f"{path.stem}.jpg")
        truth = {"imlist": [path.stem], "qimlist": [], "gnd": []}
        return np.asarray(RevisitedImages(tmp / "revisited", truth, 64).load(0))

    (tmp / "revisited").mkdir(exist_ok=True)
    return {
        "utils.images.read_rgb": read_rgb,
        "datamodules.files.load_image (datasets, imagefolder, coco, depth, predict folders)": load_image,
        "datamodules.image_files.decode_file (fast extraction)": lambda p: decode_file(p).permute(1, 2, 0).numpy(),
        "visualize.images.load_rgb (visualize CLIs, SAM masks, oneshot)": lambda p: np.asarray(load_rgb(p, 14)),
        "datamodules.sam.bsds500.BSDS500Images": bsds,
        "datamodules.sam.interactive.InteractiveInstances": interactive,
        "datamodules.oneshot.readers.FolderReader": oneshot,
        "datamodules.retrieval.revisited.RevisitedImages": revisited,
    }


# Readers of annotated sets whose official protocol reads the stored pixels (EXIF orientation not applied).
STORED_PIXELS = {"datamodules.retrieval.revisited.RevisitedImages"}


def test_every_entry_point_reads_the_same_pixels(odd, tmp_path) -> None:
    folder, expected = odd
    for label, read in entry_points(tmp_path).items():
        for name in expected:
            reference = np.asarray(rgb_image(folder / name, exif=label not in STORED_PIXELS))
            got = read(folder / name)
            assert np.array_equal(got, reference), f"{label} reads {name} differently from utils.images.read_rgb"


def test_every_entry_point_refuses_unreadable_files_naming_them(odd, tmp_path) -> None:
    from PIL import ImageFile

    folder, _ = odd
    readers = entry_points(tmp_path)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # nothing imported turns PIL's truncated-file check off
    for label, read in readers.items():
        for name in UNREADABLE:
            with pytest.raises(UserError) as err:
                read(folder / name)
            named = (str(folder / name), str(tmp_path / "revisited" / Path(name).stem))  # revisited reads a copy
            assert any(path in str(err.value) for path in named), f"{label}: {err.value}"


def test_retrieval_inputs_and_thumbnails_match_the_reader(odd, tmp_path) -> None:
    """retrieval's embedding input and contact-sheet thumbnail of an odd file equal those of a plain RGB PNG of
    the pixels `read_rgb` reads from it (same resizing and normalisation on both sides)."""
    from retrieval.index_store import load_input
    from retrieval.sheets import thumbnail

    folder, expected = odd
    for name in expected:
        plain = tmp_path / f"{Path(name).stem}_plain.png"
        Image.fromarray(read_rgb(folder / name)).save(plain)
        assert np.array_equal(load_input(folder / name, 28).numpy(), load_input(plain, 28).numpy()), name
        assert np.array_equal(thumbnail(str(folder / name)), thumbnail(str(plain))), name
    for name in UNREADABLE:
        with pytest.raises(UserError, match=str(folder / name)):
            load_input(folder / name, 28)


def test_sixteen_bit_photos_embed_differently(tmp_path, tiny_checkpoint) -> None:
    """Four different 16-bit photos used to read as the same white image (convert("RGB") clips at 255), so the
    index held four identical vectors and dedup listed them as copies."""
    pytest.importorskip("faiss")
    from retrieval.cli import main
    from retrieval.index_store import open_index

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        grey = np.asarray(Image.fromarray(base_photo(name)).convert("L"))
        Image.fromarray(grey.astype(np.uint16) * 257).save(photos / f"{name}.png")
    tiny = ["--checkpoint", str(tiny_checkpoint), "--embed-dim", "64", "--depth", "4", "--num-heads", "4"]
    options = ["--size", "56", "--num-workers", "0", "--device", "cpu"]
    assert main(["index", str(photos), "--out", str(tmp_path / "index"), *tiny, *options]) == 0
    vectors = open_index(tmp_path / "index").vectors().astype(np.float64)
    scores = vectors @ vectors.T
    assert scores[~np.eye(4, dtype=bool)].max() < 0.999, scores


def test_mask_reader_values(tmp_path) -> None:
    labels = np.arange(64 * 48, dtype=np.uint8).reshape(48, 64) % 21
    palette = Image.fromarray(labels, "P")
    palette.putpalette([v for k in range(256) for v in (k * 7 % 256, k * 3 % 256, 255 - k)])
    palette.save(tmp_path / "voc.png")
    assert np.array_equal(read_mask(tmp_path / "voc.png"), labels)  # palette indices, as VOC's labels are read
    colours = np.asarray(palette.convert("L"))
    assert np.array_equal(read_mask(tmp_path / "voc.png", values="grey"), colours)
    Image.fromarray(labels.astype(np.uint16) * 1000).save(tmp_path / "sixteen.png")
    assert np.array_equal(read_mask(tmp_path / "sixteen.png"), labels.astype(np.uint16) * 1000)
    Image.fromarray(np.dstack([labels, np.full_like(labels, 255)])).save(tmp_path / "la.png")
    for values in ("labels", "grey"):
        assert np.array_equal(read_mask(tmp_path / "la.png", values=values), labels)
    Image.fromarray(np.dstack([labels] * 3)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match=r"rgb\.png is a RGB colour image with 3 channels"):
        read_mask(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "rgb.png", values="grey"), labels)
    for name in UNREADABLE[2:]:
        (tmp_path / name).write_bytes(b"" if name == "empty.png" else b"text")
        with pytest.raises(UserError, match=f"Cannot read mask {tmp_path / name}"):
            read_mask(tmp_path / name)


def test_label_maps_read_palette_indices_and_refuse_colour(tmp_path) -> None:
    from datamodules.files import load_label, make_label_map

    labels = (np.arange(12, dtype=np.uint8).reshape(3, 4) % 3).astype(np.uint8)
    image = Image.fromarray(labels, "P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
    image.save(tmp_path / "label.png")
    label_map = make_label_map({0: 0, 1: 1, 2: 2}, "0..2")
    assert np.array_equal(load_label(tmp_path / "label.png", label_map, tmp_path / "x.jpg", (3, 4)), labels)
    image.convert("RGB").save(tmp_path / "colour.png")
    with pytest.raises(DatasetError, match=r"label .*colour\.png is a RGB colour image"):
        load_label(tmp_path / "colour.png", label_map, tmp_path / "x.jpg", (3, 4))


def test_oneshot_accepts_a_grey_alpha_mask(tmp_path) -> None:
    """A grey+alpha reference mask of the right size used to be refused as "451x300 pixels but its image is
    451x300"; its grey band is the mask."""
    from visualize.images import InputError
    from visualize.oneshot import load_mask

    mask = np.zeros((30, 45), np.uint8)
    mask[10:20, 5:25] = 255
    Image.fromarray(np.dstack([mask, np.full_like(mask, 255)])).save(tmp_path / "la.png")
    assert np.array_equal(load_mask(str(tmp_path / "la.png"), (45, 30)), mask > 0)
    with pytest.raises(InputError, match=r"is 45x30 pixels but its image is 45x31"):
        load_mask(str(tmp_path / "la.png"), (45, 31))


def test_only_upright_colour_jpegs_are_left_to_nvjpeg(odd, tmp_path) -> None:
    """nvJPEG ignores EXIF orientation and CMYK: such JPEGs are decoded on the CPU by the rules above, so the GPU
    path (``decode="gpu"``) reads them as the CPU path does. Checked without a GPU: which items stay encoded."""
    from datamodules.image_files import ImageFiles

    folder, _ = odd
    Image.fromarray(base_photo()).save(tmp_path / "plain.jpg", quality=95)
    paths = [tmp_path / "plain.jpg", folder / "exif6.jpg", folder / "cmyk.jpg"]
    items = [ImageFiles(paths, 28, gpu_jpeg=True)[i] for i in range(3)]
    assert ["jpeg" in item for item in items] == [True, False, False]


def test_a_label_of_the_unturned_image_is_refused_saying_why(odd, tmp_path) -> None:
    from datamodules.files import load_image, load_label, make_label_map

    folder, _ = odd
    image = load_image(folder / "exif6.png")
    stored_hw = image.shape[1::-1]  # the label drawn on the pixels as stored, before the EXIF turn
    Image.fromarray(np.zeros(stored_hw, np.uint8)).save(tmp_path / "label.png")
    with pytest.raises(DatasetError, match="turned by its EXIF orientation tag"):
        load_label(tmp_path / "label.png", make_label_map({0: 0}, "0"), folder / "exif6.png", image.shape[:2])
