"""Runs command lines for the reliability table without paying Python's and torch's start-up for each one.

Started once per test session, it imports the heavy libraries, then for each request (a JSON line on stdin) forks
a child that becomes ``python ARGV...`` would: its own working folder, environment, ``sys.argv`` and output file,
running train.py or a ``-m`` module as ``__main__``, exiting with that program's exit code. Nothing has computed
in this process before the fork, so the children start as a fresh interpreter would after its imports. What only a
fresh interpreter shows (import-time behaviour, ``--help`` before torch is imported) is run without this server.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import time
import traceback

import albumentations  # noqa: F401
import hydra  # noqa: F401
import lightning  # noqa: F401
import matplotlib

matplotlib.use("Agg")
import segment_anything  # noqa: F401
import sklearn.linear_model  # noqa: F401
import timm  # noqa: F401
import torch  # noqa: F401
import torchmetrics  # noqa: F401

from tests.reliability import limit_memory


def child(request: dict) -> int:
    """Become the requested command; return its exit code."""
    limit_memory(request.get("memory_limit"))
    fd = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the child
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - an uncaught exception is what a fresh interpreter would print and exit 1 on
        traceback.print_exc()
        return 1
    return 0


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -1
                break
            time.sleep(0.02)
        code = os.waitstatus_to_exitcode(status) if status != -1 else -signal.SIGKILL
        print(json.dumps({"exit_code": code}), flush=True)


if __name__ == "__main__":
    serve()
