"""`--dry-run`: each row's weights, data, protocol, published values and estimate, and what is missing with the way
to get it. Nothing is downloaded or run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reproduce.rows import Row


@dataclass(frozen=True)
class Weights:
    """An official weights file: its name, URL, pinned SHA-256 (None: recorded at first download) and cache path."""

    what: str
    filename: str
    url: str
    sha256: str | None
    path: Path


def weights(row: Row) -> list[Weights]:
    """The row's official files, named by the project's own tables (backbones/dinov2.py, sam/model.py)."""
    from backbones.dinov2 import official_filename, official_url
    from backbones.weights import hub_checkpoint_path
    from sam.model import CHECKPOINTS, URL

    found = []
    if row.backbone:
        name = official_filename(row.backbone)
        found.append(Weights(row.backbone, name, official_url(row.backbone), None, hub_checkpoint_path(name)))
    if row.sam:
        name, digest = CHECKPOINTS[row.sam]
        found.append(Weights(f"SAM {row.sam}", name, URL + name, digest, hub_checkpoint_path(name)))
    return found


def describe(row: Row, data_dir: Path) -> tuple[list[str], list[str]]:
    """The plan's lines for `row`, and what is missing with the way to get it."""
    values = ", ".join(f"{metric.removeprefix('test/')} {value:g}" for metric, value in row.values.items())
    runs = f" x {len(row.runs)} runs ({'; '.join(' '.join(run) for run in row.runs)}), averaged" * (len(row.runs) > 1)
    text = [
        f"{row.name}: {values} ({row.source}); tolerance ±{row.tolerance:g}: {row.why}",
        f"  protocol: python train.py {' '.join(row.overrides()).replace('{data_dir}', str(data_dir))}{runs}",
        f"  estimate (one H100, not measured): {row.gpu_minutes:g} min, {row.gpu_gib:g} GiB",
        *[f"  note: {row.note}"] * bool(row.note),
    ]
    missing = []
    for file in weights(row):
        present = file.path.is_file()
        pin = file.sha256 or "null (recorded beside the file at first download or use, <file>.sha256)"
        text.append(f"  weights {file.what}: {file.filename} {'present' if present else 'MISSING'} ({file.path}); "
                    f"{file.url}; sha256 {pin}")  # fmt: skip
        if not present:
            option = "backbone.download=true" if file.url.startswith("https://dl.fbaipublicfiles.com/dinov2") else (
                "sam.download=true")  # fmt: skip
            missing.append(f"{row.name}: {file.filename}: add `--set {option}` (fetches {file.url}) or put it in "
                           f"{file.path.parent}")  # fmt: skip
    absent = [need for need in row.data.needs if not (data_dir / need).exists()]
    state = "present" if not absent else f"MISSING {', '.join(absent)}"
    text.append(f"  data={row.data.config} under {data_dir}: {state}")
    if absent:
        missing.append(f"{row.name}: data {', '.join(str(data_dir / a) for a in absent)}: {row.data.get}")
    return text, missing


def dry_run(rows: Sequence[Row], data_dir: Path) -> str:
    """The whole plan as text: every row, the total estimate, then what is missing."""
    lines, missing = [], []
    for row in rows:
        text, lacking = describe(row, data_dir)
        lines += text
        missing += lacking
    total = sum(row.gpu_minutes for row in rows)
    lines.append(f"\n{len(rows)} rows, about {total:g} GPU minutes on one H100 (estimates).")
    lines += ["Missing:", *(f"- {m}" for m in missing)] if missing else ["Nothing is missing."]
    return "\n".join(lines)
