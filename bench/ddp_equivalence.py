"""Every loop under 1 and under 2 processes (Lightning DDP on the CPU, gloo): the same numbers? `python
bench/ddp_equivalence.py` runs the whole matrix and prints a Markdown table.

Each row runs `python train.py ... trainer=ddp trainer.accelerator=cpu trainer.precision=32-true` twice, with
`trainer.devices=1` and with `trainer.devices=2` (rows that train: the per-process batch halved, so that the global
batch is the same), on the tiny fixture backbone (tests/fixtures), a tiny random SAM and generated data, then compares
the two metrics.json key by key: identical, or within 1e-6 relative (the processes' sums added in another order), or
different (exit status 1).

Rows that train a head through DDP's averaged gradients are run twice more in float64 (`trainer.precision=64-true`),
and the float64 runs give their verdict: in float32 the gradients' and BatchNorm statistics' sums, added in another
order, differ in the last bits, and Adam's first steps turn the sign of a near-zero gradient into +-lr, so that a
metric with a threshold (depth's d1) can flip a pixel after a few steps. In float64 that rounding stays near 1e-14,
so equal metrics show that the two runs compute the same training; the float32 difference is printed beside it.
`retrieval index` compares the indexed descriptors of `python -m retrieval index --device
cpu --devices 1|2` instead. Each run must print its "Run directory:" line once, and both runs must write the same
files (logs aside) with the same results (JSON and CSV tables within the tolerance, PNG figures byte for byte). Runs
take about a minute each on 2 CPU cores; `--only ROW` runs some rows.

Longer than 300 lines: the whole matrix is one script (the issue's one command): the rows, their data, the runs and
the comparisons of metrics, results files and index descriptors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy's
TOLERANCE = 1e-6
TINY = (
    f"backbone.checkpoint={ROOT / 'tests/fixtures/dinov2/tiny_vit14.pth'}",
    "backbone.embed_dim=64",
    "backbone.depth=4",
    "backbone.num_heads=4",
)
TINY_SAM = (
    "sam.encoder_embed_dim=32",
    "sam.encoder_depth=2",
    "sam.encoder_num_heads=2",
    "sam.prompt_embed_dim=32",
    "sam.image_size=128",
)
# Evaluation splits of odd sizes: the 2 processes' shares differ by one (a padding sampler would repeat an item).
SEG = ("data.crop_size=56", "data.short_side=56", "head.stride=28", "data.generate_n_val=5")
DEPTH = ("data.generate_n_train=8", "data.generate_n_test=5", "data.generate_size=[42,56]", "data.crop_size=[28,42]")
FIT = ("trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1")
CLASSES = ("data=imagefolder", "data.resize_size=28", "data.crop_size=28", "data.batch_size=8")
SAME_BATCH = ((), ())
HALF_BATCH = (("data.batch_size=4",), ("data.batch_size=2",))  # 1 process x 4 = 2 processes x 2
DEPTH_HEAD = ROOT / "tests/fixtures/dinov2/tiny_vit14_depth_linear4_head.pth"  # the released heads' format
DEPTH_LOSS = "the depth losses from the processes' sums, added"
TRAIN_NOTE = "gradients and BatchNorm statistics summed in another order"


@dataclass(frozen=True)
class Row:
    """One loop: its train.py overrides (`{data}` is the bench's data folder), and each run's own."""

    overrides: tuple[str, ...]
    per_run: tuple[tuple[str, ...], tuple[str, ...]] = SAME_BATCH
    note: str = ""
    """Where the two runs' reductions differ, when they do (what a non-exact row's difference comes from)."""
    cache: bool = False
    """Each run extracts its own feature cache (under DDP: the ranks split the shards)."""

    @property
    def trains(self) -> bool:
        """The row trains a head through DDP's averaged gradients (its per-process batch is halved)."""
        return self.per_run == HALF_BATCH


ROWS: dict[str, Row] = {
    "linear_seg (train, validate, test)": Row(("experiment=quickstart", *SEG, *FIT), HALF_BATCH),
    "linear_seg (test)": Row(
        ("experiment=quickstart", "train=false", "head.checkpoint={data}/released_head.pth", *SEG)
    ),
    "linear_seg (feature cache)": Row(("experiment=cached_quickstart", *SEG, *FIT), HALF_BATCH, cache=True),
    "depth (test)": Row(
        ("experiment=depth_quickstart", "train=false", f"head.checkpoint={DEPTH_HEAD}", "head.out_index=[0,1,2,3]")
        + DEPTH,
        note="per-image errors summed in float64 by each process, then added",
    ),
    "depth (train, validate, test)": Row(
        ("experiment=depth_quickstart", *DEPTH, *FIT, "head.warmup_steps=2", "head.sigloss_warmup_steps=1"),
        HALF_BATCH,
        note=DEPTH_LOSS,
    ),
    "depth (feature cache)": Row(
        ("experiment=cached_depth_quickstart", *DEPTH, *FIT, "head.warmup_steps=2", "head.sigloss_warmup_steps=1"),
        HALF_BATCH,
        note=DEPTH_LOSS,
        cache=True,
    ),
    "fewshot": Row(
        (
            "head=fewshot",
            *CLASSES,
            "data.root={data}/classes",
            "data.k_shot=[1,5]",
            "data.n_queries=5",
            "data.n_episodes=50",
        )
    ),
    "knn": Row(("head=knn", *CLASSES, "data.root={data}/class_splits", "head.ks=[1,5,20]")),
    "linear_probe": Row(("head=linear_probe", *CLASSES, "data.root={data}/class_splits", "head.epochs=3")),
    "sam_box": Row(
        ("experiment=sam_quickstart", *TINY_SAM, "data.generate_n=5", "head.overlays=2"),
        note="box and point mIoU: MeanMetric, each process's float32 sum, then added",
    ),
    "sam_points": Row(
        ("experiment=sam_points_quickstart", *TINY_SAM, "data.generate_n=7", "head.clicks=3", "head.noc_clicks=5"),
        note="MeanMetric: each process's float32 sum, then added",
    ),
    "sam_edges": Row(("experiment=sam_edges_quickstart", *TINY_SAM, "data.generate_n=5", "head.points_per_side=4")),
    "oneshot": Row(
        ("experiment=oneshot_quickstart", *TINY_SAM, "data.n_episodes=35", "head.image_size=112", "head.overlays=2")
    ),
    "retrieval (revisited)": Row(("experiment=retrieval_quickstart", "data.image_size=112")),
}
INDEX_ROW = "retrieval index (extraction)"
NAMES = [*ROWS, INDEX_ROW]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument(
        "--only",
        action="append",
        metavar="ROW",
        help="run this row only (repeatable; a unique part of its name is enough): " + "; ".join(NAMES),
    )
    parser.add_argument("--work", type=Path, help="folder for data and runs (default: a temporary one, removed)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per run (default: %(default)s)")
    return parser


@dataclass
class Result:
    """One row's comparison."""

    keys: int = 0
    max_rel: float = 0.0
    differing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    files: int = 0
    """Results files (tables, JSON, figures) compared with the 1-process run's."""
    weights: float | None = None
    """Rows that train: the largest difference of the trained heads' weights (last.ckpt), relative to each tensor's
    largest value."""
    seconds: float = 0.0


def relative(a: object, b: object) -> float:
    """|a - b| / max(|a|, |b|) for numbers (0 when equal, inf when one is null or they are of other kinds)."""
    if a == b:
        return 0.0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(a - b) / max(abs(a), abs(b))
    return math.inf


def compare(one: dict[str, object], two: dict[str, object], result: Result) -> None:
    """Key by key into `result`: the largest relative difference and the keys beyond the tolerance."""
    if set(one) != set(two):
        result.problems.append(f"keys differ: {sorted(set(one) ^ set(two))}")
    for key in sorted(set(one) & set(two)):
        rel = relative(one[key], two[key])
        result.keys += 1
        result.max_rel = max(result.max_rel, rel)
        if rel > TOLERANCE:
            result.differing.append(f"{key}: {one[key]} vs {two[key]}")


def files_of(run_dir: Path) -> set[str]:
    """The run's output files, logs aside (CSV, TensorBoard, Hydra's and each process's `*.log`)."""
    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    return {n for n in names if not n.startswith(("csv/", "tensorboard/", ".hydra/")) and not n.endswith(".log")}


def same_content(a: object, b: object) -> bool:
    """Parsed JSON or CSV cells alike: numbers within the tolerance, everything else equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_content(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_content(x, y) for x, y in zip(a, b))
    if isinstance(a, str) and isinstance(b, str):
        try:
            a, b = float(a), float(b)
        except ValueError:
            return a == b
    return relative(a, b) <= TOLERANCE


def compare_files(one: Path, two: Path, names: set[str], result: Result) -> None:
    """The results files of both runs (JSON and CSV tables, PNG figures; not the config, which names its folder)."""
    import csv

    for name in sorted(names):
        suffix = Path(name).suffix
        if name in ("config.yaml", "metrics.json") or suffix not in (".json", ".csv", ".png"):
            continue
        a, b = one / name, two / name
        if suffix == ".png":
            same = a.read_bytes() == b.read_bytes()
        elif suffix == ".json":
            same = same_content(json.loads(a.read_text()), json.loads(b.read_text()))
        else:
            same = same_content(list(csv.reader(a.open())), list(csv.reader(b.open())))
        result.files += 1
        if not same:
            result.problems.append(f"{name} differs")


def run(command: list[str], log: Path, timeout: int) -> str:
    """Run `command` in the repository; its output (stdout and stderr) goes to `log` and is returned."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        done = subprocess.run(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    text = log.read_text()
    if done.returncode:
        raise RuntimeError(f"exit {done.returncode}: {' '.join(command)}\n{text[-3000:]}")
    return text


def train_row(name: str, row: Row, work: Path, timeout: int, result: Result, precision: str = "32-true") -> None:
    """The row's two train.py runs (1 and 2 processes) at Lightning's `precision`, compared."""
    metrics, files, run_dirs_seen = [], [], []
    for processes, own in zip((1, 2), row.per_run):
        out = work / "runs" / re.sub(r"\W+", "_", name).strip("_") / precision / f"{processes}p"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        overrides = [o.replace("{data}", str(work / "data")) for o in row.overrides]
        overrides += [*TINY, *own, f"paths.data_dir={work / 'data'}", f"paths.log_dir={out / 'logs'}"]
        overrides += ["data.num_workers=0", "trainer=ddp", "trainer.accelerator=cpu", f"trainer.precision={precision}"]
        overrides += [f"trainer.devices={processes}", "+trainer.enable_progress_bar=false"]
        if row.cache:
            overrides.append(f"feature_cache.root={out / 'cache'}")
        text = run([sys.executable, "train.py", *overrides], out / "output.txt", timeout)
        run_dirs = re.findall(r"^Run directory: (.+)$", text, flags=re.MULTILINE)
        if len(run_dirs) != 1:
            result.problems.append(f"{processes} process(es) printed {len(run_dirs)} 'Run directory' lines")
            if not run_dirs:
                return
        run_dir = Path(run_dirs[0])
        run_dirs_seen.append(run_dir)
        metrics.append(json.loads((run_dir / "metrics.json").read_text()))
        files.append(files_of(run_dir))
    compare(*metrics, result)
    if files[0] != files[1]:
        result.problems.append(f"files differ: {sorted(files[0] ^ files[1])[:6]}")
    compare_files(*run_dirs_seen, files[0] & files[1], result)
    if all((d / "checkpoints" / "last.ckpt").is_file() for d in run_dirs_seen):
        result.weights = weights_difference(*(d / "checkpoints" / "last.ckpt" for d in run_dirs_seen))


def weights_difference(one: Path, two: Path) -> float:
    """The largest difference between two checkpoints' float tensors, relative to each tensor's largest value."""
    import torch

    a, b = (torch.load(path, map_location="cpu", weights_only=True)["state_dict"] for path in (one, two))
    return max(
        float((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp_min(1e-30))
        for k in a
        if a[k].is_floating_point()
    )


def index_row(work: Path, timeout: int, result: Result) -> None:
    """`python -m retrieval index` with 1 and with 2 CPU processes: the same descriptors for the same paths."""
    import numpy as np

    from datamodules.retrieval.revisited import write_revisited_like
    from retrieval.index_store import open_index

    source = write_revisited_like(work / "data") / "jpg"
    loaded, files = [], []
    for processes in (1, 2):
        out = work / "runs" / "retrieval_index" / f"{processes}p"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        command = [sys.executable, "-m", "retrieval", "index", str(source), "--out", str(out / "index")]
        command += ["--device", "cpu", "--devices", str(processes), "--size", "112", "--num-workers", "0"]
        command += ["--samples-per-shard", "8", "--batch-size", "4", "--checkpoint", TINY[0].split("=", 1)[1]]
        command += ["--embed-dim", "64", "--depth", "4", "--num-heads", "4"]
        text = run(command, out / "output.txt", timeout)
        if text.count("Indexed ") != 1:
            result.problems.append(f"{processes} process(es) printed {text.count('Indexed ')} 'Indexed' lines")
        loaded.append(open_index(out / "index"))
        files.append(files_of(out / "index"))
    one, two = loaded
    if one.paths != two.paths:
        result.problems.append("the indexed paths differ")
        return
    a, b = one.vectors().astype(np.float64), two.vectors().astype(np.float64)
    result.keys = a.size
    scale = np.maximum(np.abs(a).max(1, keepdims=True), np.abs(b).max(1, keepdims=True))
    result.max_rel = float((np.abs(a - b) / scale).max())
    if result.max_rel > TOLERANCE:
        result.differing.append(f"descriptors differ by up to {result.max_rel:.2e} of their largest value")
    if files[0] != files[1]:
        result.problems.append(f"the index folders hold different files: {sorted(files[0] ^ files[1])[:6]}")
    result.files = len(files[0])


def write_class_folders(root: Path, counts: dict[str, int], seed: int) -> None:
    """Class folders of 40x40 noisy images around each class's colour (the few-shot tests' kind of images)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        colour = np.random.default_rng(sum(map(ord, name))).integers(0, 256, 3)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(colour + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def write_released_head(path: Path, channels: int = 64, num_classes: int = 150) -> None:
    """A random head in the layout of the released dinov2_*_ade20k_linear_head.pth files (tests/test_train.py's)."""
    import torch

    g = torch.Generator().manual_seed(0)
    state = {
        "decode_head.bn.weight": torch.rand(channels, generator=g) + 0.5,
        "decode_head.bn.bias": torch.randn(channels, generator=g),
        "decode_head.bn.running_mean": torch.randn(channels, generator=g),
        "decode_head.bn.running_var": torch.rand(channels, generator=g) + 0.5,
        "decode_head.bn.num_batches_tracked": torch.tensor(40000),
        "decode_head.conv_seg.weight": torch.randn(num_classes, channels, 1, 1, generator=g),
        "decode_head.conv_seg.bias": torch.randn(num_classes, generator=g),
    }
    torch.save({"meta": {"iter": 40000}, "state_dict": state}, path)


def verdict(result: Result, note: str) -> tuple[str, str]:
    """The table's "1 vs 2 processes" and "exact or summation order" cells."""
    if result.problems or result.differing:
        return "**differ**", "; ".join(result.problems + result.differing)[:300]
    if result.max_rel == 0:
        return "same", "exact"
    return "same", f"summation order ({note})" if note else "summation order"


def float32_cell(result: Result | None) -> str:
    """The table's float32 column for a row that trains: how far its float32 runs are apart."""
    if result is None:
        return ""
    if result.problems:
        return "; ".join(result.problems)[:300]
    weights = "" if result.weights is None else f", trained weights within {result.weights:.0e} ({TRAIN_NOTE})"
    return f"metrics within {result.max_rel:.1e}{weights}"


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    names = NAMES
    if args.only:
        names = []
        for wanted in args.only:
            found = [n for n in NAMES if n == wanted] or [n for n in NAMES if wanted in n]
            if len(found) != 1:
                parser.error(f"--only {wanted!r} matches {len(found)} rows; choose one of: {'; '.join(NAMES)}")
            names.append(found[0])
    work = args.work or Path(tempfile.mkdtemp(prefix="ddp_equivalence-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").mkdir(parents=True, exist_ok=True)
    write_released_head(work / "data" / "released_head.pth")
    write_class_folders(work / "data" / "classes", {f"class{c}": 11 for c in range(5)}, seed=0)  # 55 images
    for split, n in (("train", 9), ("val", 4)):  # 45 + 20 images
        write_class_folders(work / "data" / "class_splits" / split, {f"class{c}": n for c in range(5)}, seed=n)
    start, results, in_float32 = time.time(), {}, {}
    try:
        for name in names:
            row = ROWS.get(name, Row(()))
            for precision in ("64-true", "32-true") if row.trains else ("32-true",):
                print(f"{name} ({precision}) ...", file=sys.stderr, flush=True)
                result, began = Result(), time.time()
                try:
                    if name == INDEX_ROW:
                        index_row(work, args.timeout, result)
                    else:
                        train_row(name, row, work, args.timeout, result, precision)
                except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as err:
                    result.problems.append(str(err).splitlines()[0])
                    print(err, file=sys.stderr)
                result.seconds = time.time() - began
                if name in results:
                    in_float32[name] = result
                else:
                    results[name] = result
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    import lightning
    import torch

    print(
        f"`python bench/ddp_equivalence.py`: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, lightning {lightning.__version__}, gloo; {(time.time() - start) / 60:.0f} min.\n"
    )
    print(
        "| loop | keys | 1 vs 2 processes | max rel. difference | exact or summation order | results files "
        "| training in float32 |"
    )
    print("| --- | ---: | --- | ---: | --- | ---: | --- |")
    failed = False
    for name, result in results.items():
        row = ROWS.get(name, Row(()))
        same, how = verdict(result, row.note)
        failed |= same == "**differ**"
        if result.weights is not None:
            how = f"float64: {how}; trained weights within {result.weights:.0e}"
        print(
            f"| {name} | {result.keys} | {same} | {result.max_rel:.1e} | {how} | {result.files} "
            f"| {float32_cell(in_float32.get(name))} |"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
