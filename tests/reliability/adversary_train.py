"""train.py tried as a new user and as an adversary would: runs started together, killed generations, odd values,
head and data configs that do not fit together.

Longer than 300 lines: one area's table of cases (CASES) with the small builders they call; split, a case would sit apart from its builder.
"""

from __future__ import annotations

import multiprocessing
import os
import signal as signal_module
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from tests.reliability import TINY_TRAIN, Case, Result

SMALL = ((40, 60), (50, 70))
N_TRAIN = 64


def _generate(root: str, n_train: int) -> None:
    from datamodules.synthetic.ade20k import write_ade20k_like

    write_ade20k_like(root, n_train=n_train, n_val=2, size_range=SMALL)


def _training_images(root: Path) -> int:
    """What a quickstart run does with ``data.generate=true``: generate unless there, then read the training split."""
    from datamodules.segmentation import ADE20kDataModule

    data = ADE20kDataModule(
        str(root), generate=True, generate_n_train=N_TRAIN, generate_n_val=2, num_workers=0, crop_size=42
    )
    data.prepare_data()
    data.setup("fit")
    return len(data.train_set)


def _start_writer(tmp: Path, n_train: int) -> multiprocessing.Process:
    """A process generating into ``tmp/ade``, returned once its first files are on disk."""
    writer = multiprocessing.get_context("spawn").Process(target=_generate, args=(str(tmp / "ade"), n_train))
    writer.start()
    deadline = time.monotonic() + 60
    while not list((tmp / "ade").glob("*ADEChallengeData2016*/images/training/*.jpg")):
        assert time.monotonic() < deadline and writer.is_alive(), "the writer never started"
        time.sleep(0.02)
    return writer


def run_while_generating(tmp: Path) -> None:
    """A second quickstart with the same data.root starts while the first is generating the synthetic set."""
    import datamodules  # noqa: F401 - imported before the writer starts, so that the run starts at once

    writer = _start_writer(tmp, N_TRAIN)
    seen = _training_images(tmp / "ade")
    writer.join(120)
    assert writer.exitcode == 0, f"the first writer failed with exit code {writer.exitcode}"
    assert seen == N_TRAIN, f"the second run trained on {seen} of the {N_TRAIN} generated images"


def generate_after_kill(tmp: Path) -> None:
    """A generation SIGKILLed mid-way, then a quickstart run that generates."""
    writer = _start_writer(tmp, 4000)
    os.kill(writer.pid, signal_module.SIGKILL)
    writer.join()
    assert not (tmp / "ade" / "ADEChallengeData2016").exists(), "a killed generation left a set that looks complete"
    assert _training_images(tmp / "ade") == N_TRAIN


def check_one_whole_set(tmp: Path, result: Result) -> None:
    out = tmp / "ade" / "ADEChallengeData2016"
    counts = {str(p.relative_to(out)): len(list(p.iterdir())) for p in sorted(out.glob("*/*"))}
    splits = (("training", N_TRAIN), ("validation", 2))
    assert counts == {f"{kind}/{split}": n for kind in ("annotations", "images") for split, n in splits}, counts
    assert not [p for p in (tmp / "ade").iterdir() if ".tmp-" in p.name], sorted((tmp / "ade").iterdir())


CASES = [
    # Two quickstarts with one data.root: one of them found the other's half-written set ("ADE20k not found").
    Case("adv-train-generate-together", "lost", call=run_while_generating, check=check_one_whole_set, exit_code=0),
    # A killed generation left a half set in place, which every later run took as complete.
    Case("adv-train-generate-killed", "lost", call=generate_after_kill, check=check_one_whole_set, exit_code=0),
]


def _file(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text("not a folder\n")


def _no_update_check(tmp: Path, result: Result) -> None:
    assert "version info" not in result.text and "check for updates" not in result.text, result.text


CASES += [
    # albumentations asked PyPI for a newer version at import: a warning on every offline run, up to 2 s of waiting.
    Case(
        "adv-train-albumentations-asks-pypi",
        "clear",
        argv=("-c", "import datamodules.transforms"),
        check=_no_update_check,
        exit_code=0,
        fresh=True,
    ),
    # Hydra made the run folder under a file with a NotADirectoryError traceback.
    Case(
        "adv-train-log-dir-is-a-file",
        "traceback",
        argv=("train.py", "experiment=quickstart", "paths.log_dir={tmp}/logs"),
        setup=_file("logs"),
        names=("{tmp}/logs is a file", "paths.log_dir=PATH"),
    ),
    Case(
        "adv-train-multirun-log-dir-is-a-file",
        "traceback",
        argv=("train.py", "-m", "experiment=quickstart", "paths.log_dir={tmp}/logs", "head.lr=0.1,0.2"),
        setup=_file("logs"),
        names=("{tmp}/logs is a file", "paths.log_dir=PATH"),
    ),
    # A wrong data.predict_dir was found after training and testing: the run's metrics were never written.
    Case(
        "adv-train-predict-dir-is-a-file",
        "lost",
        argv=("train.py", *TINY_TRAIN, "data.predict_dir={tmp}/images"),
        setup=_file("images"),
        names=("data.predict_dir={tmp}/images", "data.predict_dir=FOLDER"),
        absent=("logs/*/runs/*/checkpoints/*",),
    ),
    Case(
        "adv-train-predict-dir-without-images",
        "lost",
        argv=("train.py", *TINY_TRAIN, "data.predict_dir={tmp}"),
        names=("data.predict_dir={tmp}", "holds no"),
        absent=("logs/*/runs/*/checkpoints/*",),
    ),
]

CASES += [
    # Hydra's own hint for a key that is not in the config (`+data.batchsize=4`) ended in a wrapped TypeError, exit 1.
    Case(
        "adv-train-plus-override-unknown-option",
        "wrapped",
        argv=("train.py", *TINY_TRAIN, "+data.batchsize=4"),
        names=("data.batchsize is not an option of data",),
    ),
    # A head made for class folders on a segmentation set: the head config's data.splits reached ADE20k's constructor.
    Case(
        "adv-train-probe-head-on-segmentation-data",
        "wrapped",
        argv=("train.py", *TINY_TRAIN, "head=linear_probe", "data=ade20k", "data.root={tmp}/ade"),
        names=("data.splits is not an option of data",),
    ),
    # The class-folder error named the folder but not the option that chose it.
    Case(
        "adv-train-fewshot-without-data-root",
        "clear",
        argv=("train.py", *TINY_TRAIN[1:5], "head=fewshot", "data=imagefolder", "data.num_workers=0"),
        names=("{tmp}/data/imagefolder is not a folder", "data.root=FOLDER"),
    ),
]

PCA_MAPS = ("train.py", *TINY_TRAIN, "+callbacks=pca_maps")


def _metrics_written(tmp: Path, result: Result) -> None:
    assert "no PCA maps at step 2" in result.text, result.text
    assert list(tmp.glob("logs/*/runs/*/metrics.json")), "the run's metrics were not written"


def _foreground_with_unknown_sign(tmp: Path) -> object:
    import torch

    from visualize.pca_maps import foreground_masks

    return foreground_masks(torch.randn(2, 8, 4, 4), sign="maybe")


CASES += [
    # The pca_maps callback's options were first used at the first validation: a traceback after training.
    Case(
        "adv-train-pca-maps-block-out-of-range",
        "traceback",
        argv=(*PCA_MAPS, "callbacks.pca_maps.block=99"),
        names=("callbacks.pca_maps.block=99", "callbacks.pca_maps.block=-1"),
        absent=("logs/*/runs/*/checkpoints/*",),
    ),
    Case(
        "adv-train-pca-maps-threshold-not-a-number",
        "traceback",
        argv=(*PCA_MAPS, "callbacks.pca_maps.threshold=abc"),
        names=("callbacks.pca_maps.threshold=abc",),
    ),
    # An unknown sign was taken as "positive".
    Case(
        "adv-train-pca-maps-unknown-sign",
        "silent",
        argv=(*PCA_MAPS, "callbacks.pca_maps.sign=maybe"),
        names=("callbacks.pca_maps.sign=maybe", "auto, positive, negative"),
    ),
    Case("adv-train-foreground-masks-unknown-sign", "silent", call=_foreground_with_unknown_sign, names=("maybe",)),
    # No patch above the threshold at a validation: a ValueError ended the run (and its metrics) for a missing figure.
    Case(
        "adv-train-pca-maps-no-foreground",
        "traceback",
        argv=(*PCA_MAPS, "callbacks.pca_maps.threshold=1000"),
        check=_metrics_written,
        exit_code=0,
    ),
]


class SignalAtStep(Callback):
    """Sends ``signal`` to its own process at the end of training step ``step`` (a scheduler's time limit, Ctrl-C)."""

    def __init__(self, step: int, signal: str):
        self.step, self.signal = step, getattr(signal_module, signal)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


def _stopped(name: str) -> Callable[[Path, Result], None]:
    def check(tmp: Path, result: Result) -> None:
        (last,) = tmp.glob("logs/*/runs/*/checkpoints/last.ckpt")
        assert f"Stopped by {name} at step" in result.text, result.text
        assert f"ckpt_path={last}" in result.text, result.text
        assert not list(tmp.glob("logs/*/runs/*/metrics.json"))

    return check


def _killed_by(name: str) -> tuple[str, ...]:
    return (
        "train.py",
        *TINY_TRAIN,
        "trainer.max_steps=8",
        "trainer.val_check_interval=8",
        "last_every_n_steps=2",
        f"+callbacks.stop._target_={__name__}.SignalAtStep",
        "+callbacks.stop.step=3",
        f"+callbacks.stop.signal={name}",
    )


CASES += [
    # Lightning stops gracefully on SIGTERM (a scheduler's time limit, `timeout`) and then exited 0: the run looked
    # successful, with no metrics written and nothing said. Ctrl-C exited 1, also without the way to resume.
    Case(
        "adv-train-sigterm",
        "silent",
        argv=_killed_by("SIGTERM"),
        check=_stopped("SIGTERM"),
        exit_code=128 + signal_module.SIGTERM,
    ),
    Case(
        "adv-train-sigint",
        "clear",
        argv=_killed_by("SIGINT"),
        check=_stopped("Ctrl-C (SIGINT)"),
        exit_code=128 + signal_module.SIGINT,
    ),
]


def _predict_images_one_unreadable(tmp: Path) -> None:
    (tmp / "images").mkdir()
    (tmp / "images" / "broken.jpg").write_text("not an image\n")


def _metrics_kept(tmp: Path, result: Result) -> None:
    assert list(tmp.glob("logs/*/runs/*/metrics.json")), "the trained run's metrics were lost"


CASES.append(
    # An unreadable image in predict_dir stopped the run after training and testing, before metrics.json was written.
    Case(
        "adv-train-predict-unreadable-image",
        "lost",
        argv=("train.py", *TINY_TRAIN, "data.predict_dir={tmp}/images"),
        setup=_predict_images_one_unreadable,
        names=("{tmp}/images/broken.jpg",),
        check=_metrics_kept,
    )
)


def _cache_with_many_workers(tmp: Path) -> object:
    from datamodules.feature_cache import FeatureCache
    from datamodules.loaders import available_cpus

    cache = FeatureCache(str(tmp / "cache"), "dinov2_vits14", num_workers=available_cpus() + 64)
    assert cache.num_workers == available_cpus(), cache.num_workers
    return cache


def _cache_with_negative_workers(tmp: Path) -> object:
    from datamodules.feature_cache import FeatureCache

    return FeatureCache(str(tmp / "cache"), "dinov2_vits14", num_workers=-1)


CASES += [
    # The feature cache's extraction loader took data.num_workers as it was: more processes than CPUs.
    Case("adv-train-feature-cache-workers-capped", "silent", call=_cache_with_many_workers, exit_code=0),
    # ... and a negative number reached torch's DataLoader (a traceback at the extraction).
    Case(
        "adv-train-feature-cache-negative-workers",
        "traceback",
        call=_cache_with_negative_workers,
        names=("num_workers=-1",),
    ),
]


def _windows_with_gaps(tmp: Path) -> object:
    from ops.inference import slide_windows

    return slide_windows(200, 200, crop_size=20, stride=50)  # rows 20..50 in no window: their logits were 0 / 0


CASES += [
    Case("adv-train-negative-seed", "traceback", argv=("train.py", *TINY_TRAIN, "seed=-1"), names=("seed=-1",)),
    # head.stride was first used at the first validation: a ZeroDivisionError after the training steps.
    Case(
        "adv-train-stride-zero",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "head.stride=0"),
        names=("stride=0", "1 <= stride <= crop_size"),
        absent=("logs/*/runs/*/checkpoints/*",),
    ),
    Case("adv-train-stride-beyond-window", "silent", call=_windows_with_gaps, names=("stride=50",)),
    # A one-element crop_size reached albumentations: a pydantic traceback at the first batch.
    Case(
        "adv-train-crop-size-one-element-list",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "data.crop_size=[56]"),
        names=("data.crop_size=[56]",),
    ),
    Case(
        "adv-train-segmentation-crop-size-pair",
        "traceback",
        argv=("train.py", *TINY_TRAIN, "data.crop_size=[56,70]"),
        names=("data.crop_size=[56, 70]", "square"),
    ),
]

CASES += [
    Case(
        f"adv-train-last-every-n-steps-{name}",
        "traceback",
        argv=("train.py", *TINY_TRAIN, f"last_every_n_steps={value}"),
        names=(f"last_every_n_steps={value}",),
    )
    for name, value in (("negative", -1), ("text", "abc"))
]


def _train_py_checkpoint(tmp: Path) -> None:
    import torch

    torch.save({"state_dict": {"head.conv_seg.weight": torch.zeros(150, 64, 1, 1)}}, tmp / "best-2.ckpt")


CASES.append(
    # A run's own best-*.ckpt given as head.checkpoint: the fix offered was "give a released head".
    Case(
        "adv-train-own-checkpoint-as-head-checkpoint",
        "clear",
        argv=("train.py", *TINY_TRAIN, "head.checkpoint={tmp}/best-2.ckpt", "train=false"),
        setup=_train_py_checkpoint,
        names=("{tmp}/best-2.ckpt", "train.py checkpoint", "ckpt_path=PATH"),
    )
)

CASES.append(
    # A batch larger than the training set: Lightning stopped with "No training batches", and the untrained head was
    # tested and reported (metrics.json, exit 0) as the run's result.
    Case(
        "adv-train-batch-larger-than-training-set",
        "silent",
        argv=("train.py", *TINY_TRAIN, "data.batch_size=64"),
        names=("data.batch_size=64", "32 sample(s)", "data.batch_size=32"),
        absent=("logs/*/runs/*/metrics.json",),
    )
)
