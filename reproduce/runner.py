"""Run rows one after another through `train.run`, each composed as `python train.py OVERRIDES` would compose it.

`reproduce.json` (strict JSON, rewritten atomically after every row) holds each finished row; a row finished in the
same mode is skipped unless `rerun`. A failed row keeps its error paragraph and the next row runs.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from reproduce.rows import Row
from reproduce.table import markdown
from utils.atomic import write_text
from utils.errors import UserError, find_user_error, hydra_style, option_style, user_message
from utils.results import write_json

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Pipeline models: the tiny DINOv2 of the tests' fixtures (or seeded random weights of that size) and a tiny SAM.
TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}
TINY_SAM = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "prompt_embed_dim": 32,
            "image_size": 128}  # fmt: skip


@dataclass
class Options:
    """How rows run. `pipeline`: the generated stand-ins with tiny models; `checkpoint`: the tiny backbone's file
    (None: seeded random weights); `extra`: overrides added to every real run (e.g. `backbone.download=true`)."""

    out: Path
    pipeline: bool = False
    rerun: bool = False
    data_dir: Path | None = None
    extra: Sequence[str] = ()
    trainer: str | None = None
    checkpoint: Path | None = None
    arch: dict[str, int] = field(default_factory=lambda: dict(TINY))


def commit() -> str | None:
    """The checked-out commit (`git rev-parse HEAD`), or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CONFIGS.parent, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def compose(overrides: Sequence[str], output_dir: Path):
    """configs/train.yaml composed with `overrides`, as train.py would, with its run directory `output_dir`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(f"The overrides {' '.join(overrides)} do not compose: {err}") from None
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(CONFIGS.parent)
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def real_overrides(row: Row, run: tuple[str, ...], options: Options) -> list[str]:
    data_dir = options.data_dir or CONFIGS.parent / "data"
    found = [o.replace("{data_dir}", str(data_dir)) for o in row.overrides(run)]
    paths = [f"paths.data_dir={options.data_dir}"] * bool(options.data_dir)
    return [*found, *paths, *[f"trainer={options.trainer}"] * bool(options.trainer), *options.extra]


def pipeline_overrides(row: Row, options: Options) -> list[str]:
    backbone = [f"backbone.{key}={value}" for key, value in options.arch.items()]
    backbone.append(
        f"backbone.checkpoint={options.checkpoint}" if options.checkpoint else "backbone.random_fallback=true"
    )
    sam = ["sam.random_weights=true", *(f"sam.{key}={value}" for key, value in TINY_SAM.items())]
    data_dir = str(options.out / "pipeline_data")
    return [
        *(o.replace("{data_dir}", data_dir) for o in row.pipeline),
        *backbone * bool(row.backbone),
        *sam * bool(row.sam),
        f"paths.data_dir={data_dir}",
        "data.num_workers=0",
        *[f"trainer={options.trainer}"] * bool(options.trainer),
    ]


@contextmanager
def own_hub_dir(folder: Path) -> Iterator[None]:
    """The torch.hub cache moved to `folder`: pipeline runs must not load a cached real checkpoint into tiny models."""
    import torch

    # torch.hub has no public way back to "not set" (then $TORCH_HOME decides): restoring get_dir() with set_dir
    # would pin the folder for the rest of the process, so the private setting itself is put back
    before = torch.hub._hub_dir
    torch.hub.set_dir(str(folder))
    try:
        yield
    finally:
        torch.hub._hub_dir = before


def run_row(row: Row, options: Options, execute: Callable, shared: dict | None = None) -> dict:
    """Run every run of `row` and compare the averaged metrics with the paper's; return the row's record.

    `shared` maps a pipeline run's overrides to its metrics and run folder: rows whose stand-ins are the same run
    (the model sizes of one protocol: pipeline mode swaps every size for the tiny model) run it once."""
    shared = {} if shared is None else shared
    metrics: dict[str, list[float]] = {}
    run_dirs = []
    if options.pipeline:  # every real run must still compose; the generated stand-in runs once
        for run in row.runs:
            compose(real_overrides(row, run, options), options.out / "runs" / row.name / "0")
    for index, run in enumerate(row.runs[:1] if options.pipeline else row.runs):
        output_dir = options.out / "runs" / row.name / str(index)
        overrides = pipeline_overrides(row, options) if options.pipeline else real_overrides(row, run, options)
        key = tuple(overrides)
        if options.pipeline and key in shared:
            found, output_dir = shared[key]
        else:
            if options.pipeline and row.stand_in:
                from reproduce.stand_ins import write_stand_in

                write_stand_in(row.stand_in, options.out / "pipeline_data")
            found = execute(compose(overrides, output_dir))
            shared[key] = found, output_dir
        missing = sorted(set(row.values) - set(found))
        if missing:
            raise RuntimeError(f"the run logged no {', '.join(missing)} (it logged {', '.join(sorted(found))})")
        for name in row.values:
            metrics.setdefault(name, []).append(float(found[name]))
        run_dirs.append(str(output_dir))
    values = {}
    for name, paper in row.values.items():
        ours = sum(metrics[name]) / len(metrics[name]) * row.scale
        ours = ours if math.isfinite(ours) else None  # NaN never becomes a reported number
        delta = None if ours is None else ours - paper
        within = None if options.pipeline else delta is not None and abs(delta) <= row.tolerance
        values[name] = {"paper": paper, "ours": ours, "delta": delta, "within": within}
    return {"status": "ok", "values": values, "runs": run_dirs}


def train_run(cfg) -> dict[str, float]:
    import train

    return train.run(cfg)


def load_records(path: Path) -> dict:
    import json

    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["rows"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{path} is not a reproduce.json this tool wrote ({err}). Fix: delete it, or pass another --out."
        ) from None


def run_rows(rows: Sequence[Row], options: Options, execute: Callable = train_run) -> dict:
    """Run `rows` in order (skipping those finished in this mode, unless `rerun`); return every record.

    `reproduce.json` and `reproduce.md` in `options.out` are rewritten after each row."""
    from utils.quiet import silence_unactionable_noise

    silence_unactionable_noise()
    mode = "pipeline" if options.pipeline else "real"
    path = options.out / "reproduce.json"
    records = load_records(path)
    here, device = commit(), gpu_name()
    shared: dict = {}
    for row in rows:
        done = records.get(row.name, {})
        if not options.rerun and done.get("status") == "ok" and done.get("mode") == mode:
            print(f"[reproduce] {row.name}: finished in {path}, skipped (--rerun runs it again)")
            continue
        print(f"[reproduce] {row.name} ({mode})")
        start = time.monotonic()
        try:
            with option_style(hydra_style):  # messages name train.py overrides, as `--set` takes them
                if options.pipeline:
                    with own_hub_dir(options.out / "pipeline_hub"):
                        record = run_row(row, options, execute, shared)
                else:
                    record = run_row(row, options, execute)
        except Exception as err:  # noqa: BLE001 - a failed row is reported and the next one runs
            found = find_user_error(err)
            message = user_message(found) if found else f"{type(err).__name__}: {str(err).strip() or 'no message'}"
            print(f"[reproduce] {row.name} FAILED: {message}")
            record = {"status": "failed", "error": message, "values": {}}
        record.update(mode=mode, seconds=round(time.monotonic() - start, 1), gpu=device, commit=here)
        records[row.name] = record
        write_json(path, {"rows": records})
        write_text(options.out / "reproduce.md", markdown(records) + "\n")
    return records
