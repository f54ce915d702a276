"""The layout shows the architecture (docs/architecture.md): imports follow the data flow, no import cycle, no long
module without a written reason. Read from the source with `ast`, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "backbones", "datamodules", "heads", "metrics", "oneshot", "ops", "probes", "reproduce", "retrieval", "sam", "utils",
    "visualize", "writers",
)  # fmt: skip
MAX_LINES = 300
REASON = "Longer than 300 lines:"  # a module's docstring says why it is longer, after these words

# Which project packages each package may import: the data flow datamodules -> backbones -> heads -> metrics /
# writers, with the probes tying them together; visualize reads backbones (and the one-shot CLI, SAM).
ALLOWED = {
    "utils": set(),
    "backbones": {"utils"},
    "datamodules": {"utils", "backbones"},
    "ops": {"utils"},
    "metrics": {"utils"},
    "writers": {"utils"},
    "heads": {"utils", "backbones", "ops", "sam"},  # ops and sam: the two import paths kept for users (shims)
    "sam": {"utils", "backbones", "writers", "metrics"},
    "probes": {"utils", "backbones", "heads", "ops", "metrics", "writers"},
    "oneshot": {"utils", "backbones", "sam", "ops", "metrics", "writers"},
    "retrieval": {"utils", "backbones", "datamodules", "metrics", "writers", "ops"},
    "visualize": {"utils", "backbones", "oneshot", "sam", "writers"},  # oneshot and sam: visualize.oneshot's CLI
    # reproduce: runs train.py's rows; names the official weights files; writes stand-ins with the data generators
    "reproduce": {"utils", "backbones", "datamodules", "sam", "train"},
}


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")) + [ROOT / "train.py"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in source_files()}


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports, anywhere in the file (a lazy import is still an import)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import module` imports that module; `from pkg import name` imports pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imported_modules(path) for name, path in MODULES.items()}


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(GRAPH):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_data_flow(package: str) -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in ALLOWED[package] | {package}
    )
    assert not wrong, "\n".join(wrong)


def test_heads_are_plain_modules() -> None:
    """`heads/` holds nn.Modules and their loaders: no Lightning (the probes train them)."""
    for path in (ROOT / "heads").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(n.split(".")[0] == "lightning" for n in names), path


def test_no_long_module_without_a_reason() -> None:
    files = source_files() + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    long = []
    for path in files:
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and REASON not in docstring:
            long.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    assert not long, f"over {MAX_LINES} lines without '{REASON}' in the docstring: {long}"


def test_the_import_paths_users_rely_on_keep_working() -> None:
    from backbones import load_backbone
    from heads.depth import DepthModel
    from heads.losses import upsample_cross_entropy
    from heads.sam import SamBoxPredictor, load_sam
    from ops.losses import upsample_cross_entropy as fused_loss
    from sam import SamBoxPredictor as Predictor
    from sam import load_sam as load

    assert callable(load_backbone) and DepthModel.from_official
    assert (upsample_cross_entropy, SamBoxPredictor, load_sam) == (fused_loss, Predictor, load)


DATAMODULE_TASKS = {
    "segmentation",
    "depth",
    "classification",
    "sam",
    "oneshot",
    "retrieval",
    "synthetic",
    "feature_cache",
}


def test_datamodules_are_grouped_by_task() -> None:
    """`datamodules/` holds one sub-package per task and, at its top, only what several tasks share (12 at most)."""
    top = ROOT / "datamodules"
    modules = sorted(p.name for p in top.glob("*.py"))
    packages = {p.name for p in top.iterdir() if (p / "__init__.py").is_file()}
    assert len(modules) <= 12, modules
    assert packages == DATAMODULE_TASKS, packages
    for package in packages - {"feature_cache"}:  # each task's modules say what they read in their first line
        assert (top / package / "__init__.py").read_text().startswith('"""'), package
