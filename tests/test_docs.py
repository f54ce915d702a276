"""The pages' commands and links are checked, so that a renamed option or a moved page cannot leave a page wrong.

- Every `python train.py ...` of README.md and docs/*.md (also after `torchrun` or `srun`) composes with Hydra as
  train.py would (`compose_train`) and resolves as its run would (`train.resolved_yaml`); nothing runs. An override
  is composed as written: one that needs `+` (a key the config does not have) and lacks it fails, as it would for
  the reader. With `-m`, each value of a sweep (`data.k_shot=1,5`) is composed.
- Every `python -m MODULE ARGS` names a module whose argument parser accepts ARGS: the module runs up to its first
  (outermost) argparse call, which parses and then stops the run. `python -m pip|venv|pytest` are not the
  project's and are skipped.
- The offline quickstarts that the pages name are the ones the tests run (test_train.py, test_sam_eval.py, ...).
- README.md links every docs/*.md page, and every relative link of README.md and docs/*.md points at a file
  (and, with `#anchor`, at one of its headings).

Commands and links are read by tests/doc_pages.py. An inline span naming a module without arguments
(`python -m reproduce`) names the tool and is only looked up; one naming a sub-command without its arguments
(`python -m retrieval index`) names that sub-command, which must exist (its `--help` must answer).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import re
import runpy
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

import train
from tests.doc_pages import PAGES, ROOT, Command, anchors, commands_in, links, snippets
from tests.helpers import CONFIGS, compose_train
from utils.errors import UserError

NOT_OURS = {"pip", "venv", "pytest"}

ALL = {str(page.relative_to(ROOT)): commands_in(str(page.relative_to(ROOT)), page.read_text()) for page in PAGES}


def sweep_values(override: str) -> list[str]:
    """``key=a,b`` -> ``["key=a", "key=b"]``; an override that is no sweep -> ``[override]``."""
    (parsed,) = OverridesParser.create().parse_overrides([override])
    if not parsed.is_sweep_override():
        return [override]
    return [f"{override.split('=', 1)[0]}={value}" for value in parsed.sweep_string_iterator()]


def compose_failure(command: Command, tmp_path: Path) -> str | None:
    """Why `command`'s overrides do not compose and resolve as train.py would, or None when they do."""
    if command.error:
        return command.error
    stderr = io.StringIO()
    try:
        with redirect_stderr(stderr):
            options = get_args_parser().parse_args(list(command.args))
    except SystemExit:
        return f"train.py's command line refuses it: {stderr.getvalue().strip().splitlines()[-1]}"
    if options.config_name or options.config_path or options.config_dir:
        return "it names another config; this test composes configs/train.yaml"
    try:  # with -m, every combination of the sweeps' values: the runs -m would start
        runs = [list(run) for run in itertools.product(*map(sweep_values, options.overrides))]
    except HydraException as err:
        return f"{type(err).__name__}: {' '.join(str(err).split())}"
    for overrides in runs if options.multirun else [options.overrides]:
        try:
            train.resolved_yaml(compose_train(overrides, tmp_path))
        except (HydraException, OmegaConfBaseException, UserError) as err:
            run = f" (the run {' '.join(overrides)})" if options.multirun else ""
            return f"{type(err).__name__}: {' '.join(str(err).split())}{run}"
    return None


class _Parsed(BaseException):
    """Raised after the outermost argparse call: the arguments parsed, and the command stops there."""


@contextmanager
def parse_only() -> Iterator[None]:
    """Within the block, the first (outermost) `ArgumentParser.parse_*args` call parses, then raises `_Parsed`."""
    depth = 0

    def stopping(method):
        def call(self, *args, **kwargs):
            nonlocal depth
            depth += 1
            try:
                result = method(self, *args, **kwargs)
            finally:
                depth -= 1
            if depth == 0:
                raise _Parsed
            return result

        return call

    names = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")
    with mock.patch.multiple(
        argparse.ArgumentParser, **{name: stopping(getattr(argparse.ArgumentParser, name)) for name in names}
    ):
        yield


def parse_failure(command: Command) -> str | None:
    """Why `python -m MODULE ARGS` is not a command of this project, or None when MODULE parses ARGS."""
    if command.error:
        return command.error
    module = command.module
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return f"there is no module {module}"
    if spec.submodule_search_locations is not None and importlib.util.find_spec(f"{module}.__main__") is None:
        return f"package {module} has no __main__.py"
    if command.inline and not command.args:
        return None  # `python -m reproduce` in a sentence names the tool
    args = list(command.args)
    naming = command.inline and all(re.fullmatch(r"[a-z][a-z_-]*", arg) for arg in args)
    if naming:  # `python -m retrieval index` in a sentence names the sub-command
        args.append("--help")
    argv, stderr = sys.argv, io.StringIO()
    sys.argv = [module, *args]
    try:
        with parse_only(), redirect_stderr(stderr), redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules" (imported by a test)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except _Parsed:
        return None
    except SystemExit as stop:
        if naming and stop.code == 0:
            return None
        said = stderr.getvalue().strip().splitlines()
        return f"its argument parser refuses it (exit {stop.code}): {said[-1] if said else 'nothing said'}"
    finally:
        sys.argv = argv
    return "it ran without parsing its arguments with argparse"


@pytest.mark.parametrize("page", ALL)
def test_train_commands_compose(page: str, tmp_path: Path) -> None:
    failures = [
        f"{command.where()}\n    {reason}"
        for command in ALL[page]
        if command.module is None and (reason := compose_failure(command, tmp_path))
    ]
    assert not failures, "train.py commands that do not compose:\n" + "\n".join(failures)


@pytest.mark.parametrize("page", ALL)
def test_module_commands_parse(page: str) -> None:
    failures = [
        f"{command.where()}\n    {reason}"
        for command in ALL[page]
        if command.module is not None and command.module not in NOT_OURS and (reason := parse_failure(command))
    ]
    assert not failures, "python -m commands that do not parse:\n" + "\n".join(failures)


def test_documented_quickstarts_are_run_by_the_tests() -> None:
    """A page calls a quickstart offline and quick; the tests run each one (shrunk), so that it stays so."""
    tests = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py") if path.name != "test_docs.py")
    tests += (ROOT / "tests" / "helpers.py").read_text()
    named = {
        (word.split("=", 1)[1], command.where())
        for commands in ALL.values()
        for command in commands
        if command.module is None
        for word in command.args
        if re.fullmatch(r"experiment=\w*quickstart", word)
    }
    assert named, "no page names a quickstart: the command collector is broken"
    untested = [where for name, where in named if f'"{name}"' not in tests and f"experiment={name}" not in tests]
    assert not untested, "quickstarts that no test runs:\n" + "\n".join(untested)


def test_config_choices_in_sentences_exist() -> None:
    """An inline span of config choices alone (`trainer=gpu`, `trainer=ddp trainer.devices=2`) names configs that
    exist; placeholders (`data=...`, `backbone=NAME`) are left alone."""
    groups = {path.name for path in CONFIGS.iterdir() if path.is_dir()}
    missing = []
    for page in PAGES:
        for line, text, inline in snippets(page.read_text()):
            words = [word.partition("=") for word in text.split()] if inline else []
            if not words or not all(sep and key.split(".")[0] in groups for key, sep, _ in words):
                continue
            missing += [
                f"{page.relative_to(ROOT)}:{line}: {key}={option} (no configs/{key}/{option}.yaml)"
                for key, _, option in words
                if key in groups
                and re.fullmatch(r"[a-z0-9_]+", option)
                and not (CONFIGS / key / f"{option}.yaml").exists()
            ]
    assert not missing, "config choices that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_point_at_files(page: Path) -> None:
    broken = []
    for line, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            broken.append(f"{page.relative_to(ROOT)}:{line}: {target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{page.relative_to(ROOT)}:{line}: {target} (no heading #{anchor} in {path.name})")
    assert not broken, "links that point at nothing:\n" + "\n".join(broken)


def test_readme_links_every_docs_page() -> None:
    readme = ROOT / "README.md"
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(readme)}
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link these pages: {missing}"


def test_collector_reads_what_a_reader_runs() -> None:
    """The command collector on a page with each form it meets: a continuation, a comment, quotes, a chain, a
    console prompt, a sweep, a launcher, `...`, `[--flag]`, `$VAR`, an unclosed quote, inline spans and a
    non-shell block."""
    text = """Intro `python -m reproduce` and `python train.py ... +callbacks=pca_maps`, not `it's`.

```bash
python train.py head=knn \\
    'data.k_shot=[1,5]'   # a comment
cd x && python -m retrieval index $PHOTOS/ --out ${OUT}.index | tee log
torchrun --nproc_per_node 2 train.py -m data.k_shot=1,5
python -m bench.probe_step [--tiles]
python train.py 'head.lr=[1e-3
```

```console
$ python3 -m pip install -e .
output python train.py not=a_command
```

```python
python train.py not=a_command
```
"""
    got = [(c.line, c.module, c.args, c.inline, bool(c.error)) for c in commands_in("page.md", text)]
    assert got == [
        (4, None, ("head=knn", "data.k_shot=[1,5]"), False, False),
        (6, "retrieval", ("index", "1/", "--out", "1.index"), False, False),
        (7, None, ("-m", "data.k_shot=1,5"), False, False),
        (8, "bench.probe_step", ("--tiles",), False, False),
        (9, None, (), False, True),
        (13, "pip", ("install", "-e", "."), False, False),
        (1, "reproduce", (), True, False),
        (1, None, ("+callbacks=pca_maps",), True, False),
    ]
