"""Everything this suite has never run on a GPU, in at most 8 minutes on one CUDA GPU: `python -m bench.gpu_check`.

Each part is an existing script or test run as a child process with its own time budget (its timeout); a part that
fails or runs out of time is recorded and the next one runs. Writes `gpu_check.json` (strict JSON) and
`gpu_check.md` into `--out` (default logs/gpu_check), with the GPU's name, the commit, each part's status, seconds
and the end of its output, and `<part>.log` with its whole output. Without CUDA it refuses (exit 2); `--plan` prints
the parts, their budgets and commands on any machine, and runs nothing.

| part | budget s | what it runs |
| --- | ---: | --- |
| cuda-tests | 45 | `pytest` on every test that skips without CUDA (found in tests/ by its `skipif(not torch.cuda...)`) |
| loss-self-check | 20 | the fused loss's Triton kernel against the PyTorch path (`ops.losses.self_check_problem`) |
| probe-step | 75 | `bench.probe_step`: fused loss vs interpolate + cross-entropy, the "lin." step recomputed vs cached |
| backbone-throughput | 75 | `bench.backbone_throughput`: ViT-S/14 and ViT-B/14 at 224 and 518, timm vs ours vs bf16 weights |
| sam-boxes | 45 | `bench.sam_box_to_mask --model-type vit_h --full-size --device cuda`: batched boxes vs one by one |
| extraction | 45 | `bench.extraction`: JPEG files to tokens (CPU and nvJPEG decoding) vs the raw forward |
| reproduce-pipeline | 135 | `python -m reproduce --all --pipeline --trainer default` on the GPU |
| **total** | **440** | plus start-up and writing: under 480 s (8 minutes) |
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 480
PY = sys.executable
SELF_CHECK = (
    "import torch; from ops.losses import self_check_problem; problem = self_check_problem(torch.device('cuda')); "
    "print(problem or 'the Triton kernel agrees with the PyTorch path'); raise SystemExit(1 if problem else 0)"
)


@dataclass(frozen=True)
class Part:
    name: str
    budget_s: int
    command: tuple[str, ...]


def needs_cuda(decorator: ast.expr, marks: set[str]) -> bool:
    """Whether a test's decorator is a skip-without-CUDA mark: inline, or a module-level name bound to one."""
    if isinstance(decorator, ast.Name):
        return decorator.id in marks
    if not (isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("skipif") and decorator.args):
        return False
    condition = decorator.args[0]  # `not torch.cuda.is_available()`: skipped where CUDA is absent
    return (
        isinstance(condition, ast.UnaryOp)
        and isinstance(condition.op, ast.Not)
        and ast.unparse(condition.operand).endswith("cuda.is_available()")
    )


def cuda_tests(folder: Path = ROOT / "tests") -> list[str]:
    """The pytest node ids (`tests/test_x.py::test_y`) of every test that skips without CUDA, found in the source:
    `-k cuda` would miss those whose name does not say "cuda"."""
    found = []
    for path in sorted(folder.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        marks = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign) and needs_cuda(node.value, set())
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            tested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
            if tested and any(needs_cuda(d, marks) for d in node.decorator_list):
                found.append(f"{path.relative_to(ROOT).as_posix()}::{node.name}")
    return found


def parts(out: Path) -> list[Part]:
    """The parts in order, each a command run from the repository root."""
    tests = f"-m pytest -q -p no:cacheprovider {' '.join(cuda_tests())}"
    throughput = "--models vits14 vitb14 --sizes 224 518 --variants timm ours ours-bf16 --iters 10 --repeats 3"
    sam = "--model-type vit_h --full-size --boxes 16 64 256 --repeats 2 --device cuda"  # ViT-H on the CPU: minutes
    pipeline = f"-m reproduce --all --pipeline --rerun --trainer default --out {out / 'reproduce'}"
    return [
        Part("cuda-tests", 45, (PY, *tests.split())),
        Part("loss-self-check", 20, (PY, "-c", SELF_CHECK)),
        Part("probe-step", 75, (PY, "-m", "bench.probe_step", "--repeats", "5")),
        Part("backbone-throughput", 75, (PY, "-m", "bench.backbone_throughput", *throughput.split())),
        Part("sam-boxes", 45, (PY, "-m", "bench.sam_box_to_mask", *sam.split())),
        Part("extraction", 45, (PY, "-m", "bench.extraction", "--images", "512", "--repeats", "2")),
        Part("reproduce-pipeline", 135, (PY, *pipeline.split())),
    ]


def run_part(part: Part, out: Path) -> dict:
    """Run one part under its budget; its whole output goes to `<out>/<name>.log`."""
    from utils.atomic import write_text

    start = time.monotonic()
    try:
        done = subprocess.run(
            part.command, cwd=ROOT, capture_output=True, text=True, timeout=part.budget_s, check=False
        )
        status, output = (
            ("ok" if done.returncode == 0 else f"failed (exit {done.returncode})"),
            done.stdout + done.stderr,
        )
    except subprocess.TimeoutExpired as stop:
        status = f"timeout after {part.budget_s} s"
        output = "".join(
            x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (stop.stdout, stop.stderr)
        )
    write_text(out / f"{part.name}.log", output)
    tail = output.strip().splitlines()[-25:]
    return {"part": part.name, "budget_s": part.budget_s, "seconds": round(time.monotonic() - start, 1),
            "status": status, "command": " ".join(part.command[1:]), "tail": tail}  # fmt: skip


def markdown(report: dict) -> str:
    lines = [f"GPU check on {report['gpu']}, commit {report['commit']}, {report['seconds']} s in all", "",
             "| part | budget s | took s | status |", "| --- | ---: | ---: | --- |"]  # fmt: skip
    lines += [f"| {r['part']} | {r['budget_s']} | {r['seconds']} | {r['status']} |" for r in report["parts"]]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    """`gpu_check.json` (strict JSON) and `gpu_check.md`, each written atomically."""
    from utils.atomic import write_text
    from utils.results import write_json

    write_json(out / "gpu_check.json", report)
    write_text(out / "gpu_check.md", markdown(report) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("logs/gpu_check"))
    names = [part.name for part in parts(Path())]
    parser.add_argument("--parts", nargs="+", choices=names, help="run only these parts (default: all)")
    parser.add_argument("--plan", action="store_true", help="print the parts, budgets and commands; run nothing")
    return parser


def plan(chosen: list[Part]) -> str:
    """The parts' budgets and commands, and the total against the 8-minute limit."""
    lines = [f"{part.name} (budget {part.budget_s} s): {' '.join(part.command[1:])}" for part in chosen]
    total = sum(part.budget_s for part in chosen)
    return "\n".join([*lines, f"total {total} s of budgets, plus start-up and writing: limit {LIMIT_S} s"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = [p for p in parts(args.out) if not args.parts or p.name in args.parts]
    if args.plan:
        print(plan(chosen))
        return 0
    import torch

    if not torch.cuda.is_available():
        print(
            f"\nError: python -m bench.gpu_check measures the CUDA paths and needs a CUDA GPU, but torch "
            f"{torch.__version__} (CUDA build {torch.version.cuda}) sees none. Run it on a machine with one GPU; on the "
            "CPU, `pytest` and `python -m reproduce --all --pipeline` check what can be checked there.",
            file=sys.stderr,
        )
        return 2
    from reproduce.runner import commit

    start = time.monotonic()
    report = {"gpu": torch.cuda.get_device_name(), "commit": commit(), "limit_s": LIMIT_S, "seconds": 0.0, "parts": []}
    for part in chosen:
        print(f"[gpu_check] {part.name} (budget {part.budget_s} s)", flush=True)
        report["parts"].append(run_part(part, args.out))
        report["seconds"] = round(time.monotonic() - start, 1)
        write_report(args.out, report)
    print(markdown(report))
    return 0 if all(r["status"] == "ok" for r in report["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
