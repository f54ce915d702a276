"""Weights and downloads: first contact without weights, offline downloads, damaged and changed weight files,
random weights made visible, the visualisation CLIs' weights, images and --help.

`before` is what the code did before this issue's weights work (commit 5d3c64a): where it already printed one
paragraph but in the wrong syntax or with an empty reason, it says "clear".

Longer than 300 lines: one area's table of cases (CASES) with the small builders they call; split, a case would sit apart from its builder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.conftest import TINY_SAM
from tests.fixture_paths import DINOV2, TINY_CHECKPOINT
from tests.reliability import TINY_TRAIN, Case, Result

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
ADE_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}
TINY_ARGS = ("--embed-dim", "64", "--depth", "4", "--num-heads", "4", "--size", "56", "--device", "cpu")
DEPTH_HEAD = DINOV2 / "tiny_vit14_depth_linear_head.pth"
DEAD_PID = 2**22 + 1  # above Linux's largest pid_max: never a live process


def hub(tmp: Path) -> Path:
    """The case's hub cache folder (TORCH_HOME is ``tmp/torch_home``)."""
    return tmp / "torch_home" / "hub" / "checkpoints"


def photos(tmp: Path) -> None:
    from PIL import Image

    for name, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        image = Image.new("RGB", (64, 64), colour)
        image.paste((250, 250, 250), (16, 16, 48, 48))
        image.save(tmp / f"{name}.png")


def bomb(tmp: Path) -> None:
    """A 24 kB PNG of 14000 x 14000 pixels (a 1-bit image compresses to almost nothing)."""
    from PIL import Image

    Image.new("1", (14000, 14000)).save(tmp / "bomb.png")


def damaged_files(tmp: Path) -> None:
    """Weight files as an interrupted copy, a random file, pickled code and a list leave them."""
    import torch

    (tmp / "zero.pth").write_bytes(b"")
    data = TINY_CHECKPOINT.read_bytes()
    (tmp / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp / "random.pth").write_bytes(os.urandom(4096))
    torch.save([1, 2, 3], tmp / "list.pth")
    torch.save({"weight": CodeOnLoad(tmp / "code_ran")}, tmp / "code.pth")


class CodeOnLoad:
    """Saved into a checkpoint, it asks the loader to call ``exec``, which would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def load_backbone(checkpoint: Path | None = None, **options: object) -> object:
    from backbones import load_backbone as load

    return load("dinov2_vits14", checkpoint=checkpoint, **TINY, **options)


def tiny_backbone() -> object:
    return load_backbone(TINY_CHECKPOINT)


def depth_head(checkpoint: Path | str, **options: object) -> object:
    from heads.depth import DepthModel

    return DepthModel.from_official(tiny_backbone(), checkpoint, "linear", **options)


def sam(**options: object) -> object:
    from sam.model import load_sam

    return load_sam("vit_b", **TINY_SAM, **options)


def seg_head(checkpoint: Path, **options: object) -> object:
    from heads.linear_seg import LinearSegHead, load_official_head

    return load_official_head(checkpoint, LinearSegHead(64, 150), **options)


def wrong_pin(tmp: Path, path: Path) -> Path:
    """A copy of ``path`` in ``tmp`` with a ``<file>.sha256`` beside it that pins another hash."""
    copy = tmp / path.name
    if copy != path:
        shutil.copy(path, copy)
    copy.with_name(copy.name + ".sha256").write_text("0" * 64 + f"  {path.name}\n")
    return copy


def head_files(tmp: Path) -> None:
    """A segmentation head and a SAM checkpoint that fit the models they are loaded into."""
    import torch

    from heads.linear_seg import LinearSegHead
    from sam.model import build_sam

    torch.save(LinearSegHead(64, 150).state_dict(), tmp / "seg_head.pth")
    torch.save(build_sam("vit_b", **TINY_SAM).state_dict(), tmp / "sam.pth")


def changed_cached_backbone(tmp: Path) -> object:
    """Use a hub-cache file once (its hash is recorded), then replace it and use it again."""
    hub(tmp).mkdir(parents=True)
    cached = hub(tmp) / "dinov2_vits14_pretrain.pth"
    shutil.copy(TINY_CHECKPOINT, cached)
    load_backbone()
    import torch

    state = torch.load(TINY_CHECKPOINT, weights_only=True)
    state["norm.weight"] += 1  # same keys and shapes, other values: only the hash can tell
    torch.save(state, cached)
    return load_backbone()


def stale_download_temp(tmp: Path) -> None:
    """A killed download's hidden temporary file in the hub cache, then a download."""
    from backbones.weights import download_to_cache

    hub(tmp).mkdir(parents=True)
    stale = hub(tmp) / f".dinov2_vits14_pretrain.pth.tmp-{DEAD_PID}-x1y2.pth"
    stale.write_bytes(b"\0" * 1000)
    stale.with_name(stale.name + ".3f2a.partial").write_bytes(b"\0" * 1000)  # torch.hub's own partial file
    download_to_cache(TINY_CHECKPOINT.as_uri())


def no_stale_temp_and_hash_recorded(tmp: Path, result: Result) -> None:
    files = sorted(path.name for path in hub(tmp).iterdir())
    assert files == ["tiny_vit14.pth", "tiny_vit14.pth.sha256"], files


def random_weights_are_named(tmp: Path, result: Result) -> None:
    record = json.loads((tmp / "m.json").read_text())
    assert record["random_weights"] is True and "RANDOM WEIGHTS" in record["backbone"], record
    assert "RANDOM WEIGHTS" in result.text, result.text


def help_without_torch(tmp: Path, result: Result) -> None:
    assert "--random-weights" in result.text and "_base" not in result.text, result.text
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.text.splitlines() if line.startswith("import time:")]
    heavy = [name for name in imported if name.split(".")[0] in ("torch", "timm", "matplotlib", "numpy")]
    assert imported and not heavy, heavy


def no_code_ran(tmp: Path, result: Result) -> None:
    assert not (tmp / "code_ran").exists(), "the checkpoint's pickled code ran"


def voc_offline(tmp: Path) -> object:
    from datamodules.segmentation import VOC2012DataModule

    return VOC2012DataModule(str(tmp / "voc"), download=True).prepare_data()


def open_bomb(tmp: Path) -> object:
    from utils.images import open_image

    return open_image(tmp / "bomb.png")


def depth_head_released_offline(tmp: Path) -> object:
    return depth_head("dinov2_vits14_nyu_linear_head.pth", download=True)


CASES = [
    # first contact: the headline command without weights says what to do next, in train.py syntax
    Case(
        "weights-first-contact-train",
        "clear",
        argv=("train.py", "head=linear_seg", "data=ade20k", "data.root={tmp}/ade"),
        names=("backbone.checkpoint=PATH", "backbone.download=true", "backbone.random_fallback=true"),
        absent=("ade", "torch_home/hub/checkpoints/*"),
    ),
    Case(
        "weights-first-contact-visualize",
        "clear",
        argv=("-m", "visualize.pca", "{tmp}/a.png", "--out", "{tmp}/o.png", "--device", "cpu"),
        setup=photos,
        names=("--checkpoint PATH", "--download", "--random-weights", DINOV2_URL),
        absent=("o.png",),
    ),
    # network failures name the URL and leave nothing behind
    Case(
        "weights-backbone-download-offline",
        "traceback",
        argv=("train.py", "head=linear_seg", "data=ade20k", "data.root={tmp}/ade", "backbone.download=true"),
        names=(DINOV2_URL, "backbone.checkpoint=PATH"),
        absent=("torch_home", "ade"),
    ),
    Case(
        "weights-data-download-offline",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "data.generate=false", "data.download=true"),
        names=(ADE_URL, "data.download=true"),
        absent=("ade", "ade/*"),
    ),
    Case(
        "weights-voc-download-offline",
        "traceback",
        call=voc_offline,
        names=("VOCtrainval_11-May-2012.tar", "https://"),
        absent=("voc",),
    ),
    Case(
        "weights-sam-download-offline",
        "traceback",
        call=lambda tmp: sam(download=True),
        names=("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",),
        absent=("torch_home",),
    ),
    Case(
        "weights-depth-head-download-offline",
        "traceback",
        call=depth_head_released_offline,
        names=("https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_nyu_linear_head.pth",),
        absent=("torch_home",),
    ),
    # damaged weight files: a reason, the file named, never code run
    Case(
        "weights-zero-byte-backbone",
        "clear",
        call=lambda tmp: load_backbone(tmp / "zero.pth"),
        setup=damaged_files,
        names=("{tmp}/zero.pth", "empty (0 bytes)"),
    ),
    Case(
        "weights-truncated-backbone",
        "clear",
        call=lambda tmp: load_backbone(tmp / "truncated.pth"),
        setup=damaged_files,
        names=("{tmp}/truncated.pth", "truncated"),
    ),
    Case(
        "weights-random-bytes-backbone",
        "clear",
        call=lambda tmp: load_backbone(tmp / "random.pth"),
        setup=damaged_files,
        names=("{tmp}/random.pth", "not a file saved by torch.save"),
    ),
    Case(
        "weights-pickled-code-backbone",
        "clear",
        call=lambda tmp: load_backbone(tmp / "code.pth"),
        setup=damaged_files,
        names=("{tmp}/code.pth", "never as code"),
        check=no_code_ran,
    ),
    Case(
        "weights-list-not-tensors-backbone",
        "clear",
        call=lambda tmp: load_backbone(tmp / "list.pth"),
        setup=damaged_files,
        names=("{tmp}/list.pth", "holds list"),
    ),
    Case(
        "weights-zero-byte-depth-head",
        "clear",
        call=lambda tmp: depth_head(tmp / "zero.pth"),
        setup=damaged_files,
        names=("{tmp}/zero.pth", "empty (0 bytes)"),
    ),
    Case(
        "weights-zero-byte-sam",
        "clear",
        call=lambda tmp: sam(checkpoint=str(tmp / "zero.pth")),
        setup=damaged_files,
        names=("{tmp}/zero.pth", "empty (0 bytes)"),
    ),
    Case(
        "weights-zero-byte-seg-head",
        "clear",
        call=lambda tmp: seg_head(tmp / "zero.pth"),
        setup=damaged_files,
        names=("{tmp}/zero.pth", "empty (0 bytes)"),
    ),
    # hashes: trust on first use in the hub cache, pins by option or <file>.sha256 for every kind of weights
    Case(
        "weights-changed-cached-backbone",
        "silent",
        call=changed_cached_backbone,
        names=("dinov2_vits14_pretrain.pth", "dinov2_vits14_pretrain.pth.sha256", "has SHA-256"),
    ),
    Case(
        "weights-backbone-pin-mismatch",
        "silent",
        call=lambda tmp: load_backbone(TINY_CHECKPOINT, sha256="0" * 64),
        names=("tiny_vit14.pth", "sha256=" + "0" * 64, "has SHA-256"),
    ),
    Case(
        "weights-depth-head-pin-file-mismatch",
        "silent",
        call=lambda tmp: depth_head(wrong_pin(tmp, DEPTH_HEAD)),
        names=("tiny_vit14_depth_linear_head.pth.sha256", "0" * 64),
    ),
    Case(
        "weights-seg-head-pin-file-mismatch",
        "silent",
        call=lambda tmp: seg_head(wrong_pin(tmp, tmp / "seg_head.pth")),
        setup=head_files,
        names=("seg_head.pth.sha256", "0" * 64),
    ),
    Case(
        "weights-sam-pin-file-mismatch",
        "silent",
        call=lambda tmp: sam(checkpoint=str(wrong_pin(tmp, tmp / "sam.pth"))),
        setup=head_files,
        names=("sam.pth.sha256", "0" * 64),
    ),
    Case(
        "weights-malformed-pin",
        "silent",
        call=lambda tmp: load_backbone(TINY_CHECKPOINT, sha256="abc123"),
        names=("sha256=abc123", "64 hexadecimal digits"),
    ),
    Case(
        "weights-stale-download-temp",
        "silent",
        call=stale_download_temp,
        check=no_stale_temp_and_hash_recorded,
        exit_code=0,
    ),
    # random weights are visible; images are opened safely; --help is quick
    Case(
        "weights-random-weights-figure",
        "silent",
        argv=(
            "-m",
            "visualize.match",
            "{tmp}/a.png",
            "{tmp}/b.png",
            "--out",
            "{tmp}/m.png",
            "--random-weights",
            "--num-pairs",
            "2",
            *TINY_ARGS,
        ),
        setup=photos,
        check=random_weights_are_named,
        exit_code=0,
    ),
    Case(
        "weights-decompression-bomb-pca",
        "traceback",
        argv=("-m", "visualize.pca", "{tmp}/bomb.png", "--out", "{tmp}/o.png", "--random-weights", *TINY_ARGS),
        setup=bomb,
        names=("bomb.png", "196000000 pixels", "MAX_IMAGE_PIXELS"),
        absent=("o.png",),
    ),
    Case(
        "weights-decompression-bomb-open-image",
        "traceback",
        call=open_bomb,
        setup=bomb,
        names=("bomb.png", "MAX_IMAGE_PIXELS"),
    ),
    Case(
        "weights-visualize-help-without-torch",
        "clear",
        argv=("-X", "importtime", "-m", "visualize.match", "--help"),
        fresh=True,
        check=help_without_torch,
        exit_code=0,
    ),
]
