"""Starting train.py and `python -m retrieval` as separately launched processes, as on a cluster of two nodes that
share a folder: two `torchrun --nnodes 2` commands, or two processes with the environment SLURM's srun gives its
tasks (tests/test_two_nodes.py).

Also what those processes load by name: `SignalAtStep`, a callback (``+callbacks.NAME._target_=...``) that sends
its own process signals at a training step, as a scheduler would; and ``python -m tests.launch extract ...``, one
feature-cache extraction job that can be held mid-way, so that a second job meets it at work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from tests.fixture_paths import TINY_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


class SignalAtStep(Callback):
    """Sends this process ``signals`` (names, in order) once training step ``step`` ends."""

    def __init__(self, step: int, signals: list[str]):
        self.step, self.signals, self.sent = step, list(signals), False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            for name in self.signals:
                os.kill(os.getpid(), getattr(signal, name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_env(**extra: str) -> dict[str, str]:
    """The environment of a launched process: one thread (two processes share the test machine's cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    return env | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"} | extra


def torchrun_nodes(command: list[str], logs: Path, rdzv_id: str | None = None, **env: str) -> list[subprocess.Popen]:
    """Two `torchrun --nnodes 2 --nproc-per-node 1 --node-rank R` commands on 127.0.0.1, as two nodes would run
    them; ``command``: the script and its arguments (``-m retrieval ...`` for a module). Output: ``logs``-<R>.log."""
    port = str(free_port())
    rdzv = ["--rdzv-id", rdzv_id] if rdzv_id else []
    processes = []
    for rank in (0, 1):
        launcher = [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), *rdzv]
        launcher += ["--master-addr", "127.0.0.1", "--master-port", port]
        out = open(f"{logs}-{rank}.log", "w")  # noqa: SIM115 - closed with the process (wait_all)
        processes.append(
            subprocess.Popen(
                [*launcher, *command],
                cwd=ROOT,
                env=quiet_env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # wait_all ends the launcher and its workers together
            )
        )
    return processes


def srun_tasks(command: list[str], logs: Path, job_id: str, **env: str) -> list[subprocess.Popen]:
    """Two processes with the environment srun gives the tasks of ``sbatch --nodes 2 --ntasks-per-node 1``: no
    MASTER_ADDR or MASTER_PORT (Lightning takes the first host of SLURM_NODELIST, and port 15000 + the last four
    digits of the job id). Output: ``logs``-<R>.log."""
    slurm = {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "SLURM_LOCALID": "0",
    }
    processes = []
    for rank in (0, 1):
        task = slurm | {"SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank)}
        out = open(f"{logs}-{rank}.log", "w")  # noqa: SIM115 - closed with the process (wait_all)
        processes.append(
            subprocess.Popen(
                [sys.executable, *command],
                cwd=ROOT,
                env=quiet_env(**task, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return processes


def wait_all(processes: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    """The exit codes, once every process has ended; if one is still running after ``timeout``, every process (and
    the processes it started: a torchrun's workers) is killed."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(deadline - time.monotonic(), 1)) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def slurm_job_port_free() -> str:
    """A job id whose port (15000 + its last four digits, Lightning's SLURM rule) is free on this machine."""
    for _ in range(100):
        digits = int.from_bytes(os.urandom(2), "little") % 10000
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", 15000 + digits))
            except OSError:
                continue
        return f"7{digits:04d}"
    raise RuntimeError("no free port in 15000..24999")


def tiny_extraction(root: Path, ade: Path) -> Path:
    """The folder of the feature cache of the ADE20k-like set ``ade`` under ``root``, through the tiny backbone."""
    from backbones import load_backbone
    from datamodules.segmentation import ADE20kDataModule
    from tests.conftest import TINY
    from tests.helpers import CacheFor, extraction_trainer

    backbone = load_backbone("dinov2_vits14", TINY_CHECKPOINT, **TINY)
    data = ADE20kDataModule(str(ade), batch_size=2, num_workers=0, crop_size=42, short_side=42)
    return CacheFor(root).prepare(data, backbone, extraction_trainer).directory


def extract_main(root: str, ade: str, record: str, go: str = "") -> None:
    """One `tiny_extraction` job; every shard it writes is appended to ``record``. With ``go``, each shard then
    waits until that file exists: a second job started meanwhile finds this one at work."""
    from datamodules.feature_cache.extraction import _OpenShard

    commit = _OpenShard.commit

    def recorded_commit(self: _OpenShard) -> None:
        commit(self)
        with open(record, "a") as log:
            log.write(json.dumps({"pid": os.getpid(), "shard": self.shard}) + "\n")
        deadline = time.monotonic() + 120
        while go and not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    _OpenShard.commit = recorded_commit  # type: ignore[method-assign]
    print(f"CACHE {tiny_extraction(Path(root), Path(ade))}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["extract"]:
        extract_main(*sys.argv[2:])
