"""Two real processes (Lightning DDP on the CPU, gloo) give the 1-process numbers, and print and write once.

Each test runs `python train.py ... trainer=ddp trainer.accelerator=cpu trainer.devices=2` in a subprocess (Lightning
starts the second process itself) and the same run in this process on one CPU. bench/ddp_equivalence.py runs the whole
matrix of loops (bench/ddp_equivalence.py); these are two of its rows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import train
from ops.depth_losses import gradient_loss, sig_loss
from tests.conftest import TINY
from tests.fixture_paths import TINY_CHECKPOINT
from tests.helpers import compose_train
from tests.test_fewshot_cli import make_class_folders
from tests.test_train import write_released_head
from utils.distributed import ProcessSyncBatchNorm, sum_over_processes

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = [f"backbone.checkpoint={TINY_CHECKPOINT}", *(f"backbone.{key}={value}" for key, value in TINY.items())]
TWO_PROCESSES = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2"]


def run_two_processes(overrides: list[str], logs: Path) -> tuple[str, Path]:
    """`python train.py OVERRIDES` on 2 processes; its output (stdout and stderr) and its one run directory."""
    command = [sys.executable, "train.py", *overrides, *TWO_PROCESSES, f"paths.log_dir={logs}"]
    command.append("+trainer.enable_progress_bar=false")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    run_dirs = list(logs.glob("*/runs/*"))
    assert len(run_dirs) == 1, run_dirs  # both processes write into rank 0's run directory
    assert re.findall(r"^Run directory: (.+)$", done.stdout, flags=re.MULTILINE) == [str(run_dirs[0])]
    return done.stdout, run_dirs[0]


def test_linear_seg_test_metrics_are_the_one_process_ones(tmp_path: Path) -> None:
    head = tmp_path / "dinov2_tiny_ade20k_linear_head.pth"
    write_released_head(head, channels=64, num_classes=150)
    overrides = [
        "experiment=quickstart",
        "train=false",
        f"head.checkpoint={head}",
        *BACKBONE,
        f"data.root={tmp_path / 'ade'}",
        "data.generate_n_train=2",
        "data.generate_n_val=5",  # 3 + 2: the processes' shares differ, none is padded with a repeat
        "data.num_workers=0",
        "data.crop_size=56",
        "data.short_side=56",
        "head.stride=28",
    ]
    one = train.run(compose_train(overrides, tmp_path / "one"))  # writes the data the two processes then read
    stdout, run_dir = run_two_processes(overrides, tmp_path / "logs")
    two = json.loads((run_dir / "metrics.json").read_text())
    assert two == one
    assert len(re.findall(r"^test/mIoU\s", stdout, flags=re.MULTILINE)) == 1  # train.py's table once, not per process


def test_knn_gathers_every_image_once(tmp_path: Path) -> None:
    for split, n in (("train", 5), ("val", 3)):  # 5 x 3 = 15 val images: shares of 8 and 7
        make_class_folders(tmp_path / "images" / split, {f"class{c}": n for c in range(5)}, seed=n)
    overrides = [
        "head=knn",
        "data=imagefolder",
        *BACKBONE,
        f"data.root={tmp_path / 'images'}",
        "data.resize_size=28",
        "data.crop_size=28",
        "data.num_workers=0",
        "data.batch_size=4",
        "head.ks=[1,3,25]",
    ]
    cfg = compose_train([*overrides, "trainer=cpu"], tmp_path / "one")
    one = train.run(cfg)
    stdout, run_dir = run_two_processes(overrides, tmp_path / "logs")
    assert json.loads((run_dir / "metrics.json").read_text()) == one
    table = (Path(cfg.paths.output_dir) / "knn.csv").read_text()
    assert (run_dir / "knn.csv").read_text() == table  # rank 0's table of every image, written once
    assert stdout.count("Results written to") == 1


def synced_batchnorm(rank: int, rendezvous: str, x: torch.Tensor, weights: torch.Tensor, out: dict) -> None:
    """One of 2 processes: ProcessSyncBatchNorm on this rank's half of `x`; its output, stats and input gradient."""
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    bn = ProcessSyncBatchNorm(x.shape[1])
    half = x.chunk(2)[rank].clone().requires_grad_(True)
    y = bn(half)
    (y * weights.chunk(2)[rank]).sum().backward()
    out[rank] = (y.detach(), bn.running_mean, bn.running_var, half.grad)
    dist.destroy_process_group()


def test_batchnorm_synchronised_over_two_cpu_processes_is_one_batch(tmp_path: Path) -> None:
    """torch's SyncBatchNorm refuses the CPU; ours normalises 2 x 3 images as the plain BatchNorm does 6."""
    g = torch.Generator().manual_seed(0)
    x, weights = torch.randn(6, 5, 4, 4, generator=g) * 3 + 2, torch.randn(6, 5, 4, 4, generator=g)
    out = mp.Manager().dict()
    mp.spawn(synced_batchnorm, args=(f"file://{tmp_path / 'rendezvous'}", x, weights, out), nprocs=2)
    bn, whole = torch.nn.BatchNorm2d(5), x.clone().requires_grad_(True)
    expected = bn(whole)
    (expected * weights).sum().backward()
    y, grad = torch.cat([out[0][0], out[1][0]]), torch.cat([out[0][3], out[1][3]])
    torch.testing.assert_close(y, expected.detach())
    for rank in (0, 1):
        torch.testing.assert_close(out[rank][1], bn.running_mean)
        torch.testing.assert_close(out[rank][2], bn.running_var)
    torch.testing.assert_close(grad, whole.grad)


def depth_losses(pred: torch.Tensor, target: torch.Tensor, warm_up: bool, total=None) -> torch.Tensor:
    """The linear depth heads' training loss: SigLoss + 0.5 x the gradient loss."""
    return sig_loss(pred, target, warm_up, total=total) + 0.5 * gradient_loss(pred, target, total=total)


def split_depth_losses(rank: int, rendezvous: str, pred: torch.Tensor, target: torch.Tensor, out: dict) -> None:
    """One of 2 processes: the depth losses of this rank's half of the batch, summed over both; loss and gradient."""
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    for warm_up in (False, True):
        half = pred.chunk(2)[rank].clone().requires_grad_(True)
        loss = depth_losses(half, target.chunk(2)[rank], warm_up, sum_over_processes)
        loss.backward()
        out[rank, warm_up] = (loss.detach(), half.grad)
    dist.destroy_process_group()


def test_depth_losses_over_two_processes_are_the_whole_batch_loss(tmp_path: Path) -> None:
    """SigLoss and the gradient loss are non-linear in the batch: each process's sums are added, so that 2 x 2 maps
    give the loss of the 4 and (once DDP averages the 2 processes' gradients) its gradient."""
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 1, 12, 16, generator=g) * 5 + 0.5
    target = torch.rand(4, 1, 12, 16, generator=g) * 8 + 0.1
    target[2:, :, :, 5:] = 0  # the second process's maps have fewer valid pixels
    out = mp.Manager().dict()
    mp.spawn(split_depth_losses, args=(f"file://{tmp_path / 'rendezvous'}", pred, target, out), nprocs=2)
    for warm_up in (False, True):
        whole = pred.clone().requires_grad_(True)
        expected = depth_losses(whole, target, warm_up)
        expected.backward()
        per_process = [depth_losses(p, t, warm_up) for p, t in zip(pred.chunk(2), target.chunk(2))]
        assert not torch.isclose(sum(per_process) / 2, expected, rtol=1e-3)  # what each process alone would train
        for rank in (0, 1):
            torch.testing.assert_close(out[rank, warm_up][0], expected.detach(), rtol=1e-6, atol=0)
        averaged = torch.cat([out[0, warm_up][1], out[1, warm_up][1]]) / 2  # DDP's mean of the processes' gradients
        torch.testing.assert_close(averaged, whole.grad, rtol=1e-5, atol=1e-9)
