"""The one error path: user mistakes are `UserError`s, spelled in the syntax of the command that was run.

Library code raises `UserError` (or a subclass: `CheckpointError`, `DatasetError`, ...) whose message names the
file or value and the fix. A fix that names an option is written with `option(owner, name, value)`, which spells
it the way the running front end takes it:

- Python (the default): ``checkpoint=PATH``;
- train.py (Hydra overrides): ``backbone.checkpoint=PATH``;
- a CLI (argparse): ``--checkpoint PATH``.

Front ends wrap their body in `exit_on_user_error`, which finds the `UserError` however deeply it was wrapped
(Hydra's instantiate, a loader worker, a Lightning hook), prints its message as one paragraph and exits with 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A mistake the user can fix: a bad option, a missing or malformed file. The message names it and the fix."""


OptionStyle = Callable[[str, str, object], str]
"""``(owner, name, value) -> spelling``: owner is the config group (``backbone``, ``head``, ``data``, ...), or ``""``."""


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def python_style(owner: str, name: str, value: object) -> str:
    """``name=value``: keyword arguments of the Python API."""
    return f"{name}={value!r}" if isinstance(value, bool) else f"{name}={value}"


def hydra_style(owner: str, name: str, value: object) -> str:
    """``owner.name=value`` (``name=value`` for a top-level option): a train.py override."""
    return f"{owner}.{name}={_value_text(value)}" if owner else f"{name}={_value_text(value)}"


def cli_style(flags: Mapping[str, str] | None = None) -> OptionStyle:
    """``--name VALUE`` (``--name`` alone for ``true``), with ``flags`` renaming options: by name
    (``random_fallback``: ``--random-weights``), by owner and name (``sam.random_weights``), or every option of an
    owner by a prefix (``sam.*``: ``--sam-``, so that SAM's ``checkpoint`` is ``--sam-checkpoint``)."""
    flags = dict(flags or {})

    def spell(owner: str, name: str, value: object) -> str:
        prefix = flags.get(f"{owner}.*", "--")
        flag = flags.get(f"{owner}.{name}") or (
            flags.get(name, prefix + name.replace("_", "-")) if prefix == "--" else prefix + name.replace("_", "-")
        )
        return flag if value is True else f"{flag} {_value_text(value)}"

    return spell


_STYLE: ContextVar[OptionStyle] = ContextVar("option_style", default=python_style)


def option(owner: str, name: str, value: object = "VALUE") -> str:
    """How the user sets option ``name`` of ``owner`` to ``value`` in the command that is running."""
    return _STYLE.get()(owner, name, value)


@contextmanager
def option_style(style: OptionStyle) -> Iterator[None]:
    """Spell options in ``style`` inside the block (`option` reads it)."""
    token = _STYLE.set(style)
    try:
        yield
    finally:
        _STYLE.reset(token)


def find_user_error(err: BaseException) -> UserError | None:
    """The `UserError` behind ``err``: itself, or one it was raised from (Hydra's instantiate wraps them)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def user_message(err: BaseException) -> str:
    """The user's part of an error; errors re-raised from loader workers carry the worker traceback first."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.rsplit("\n", 1)[-1].split(": ", 1)[-1]
    return text or f"{type(err).__name__} (no reason given)"


def load_failure_reason(err: Exception) -> str:
    """The one line of a ``torch.load`` failure that says what is wrong (torch's own text is pages long and, for
    ``weights_only``, suggests loading the file as code)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [line for line in lines if not line.startswith(skip)] or ["refused by the weights_only unpickler"]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def cli_exit_code(body: Callable[[], object], style: OptionStyle) -> int:
    """A command-line tool's exit code: 0 when ``body`` returns, 2 after a user error's one paragraph
    (`exit_on_user_error`), or the code ``body`` exits with."""
    try:
        exit_on_user_error(body, style)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def exit_on_user_error(body: Callable[[], T], style: OptionStyle = python_style) -> T:
    """Run ``body`` with options spelled in ``style``; a `UserError` prints one paragraph and exits with 2."""
    try:
        with option_style(style):
            return body()
    except Exception as err:
        found = find_user_error(err)
        if found is None:
            raise
        print(f"\nError: {user_message(found)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
