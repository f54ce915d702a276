"""README.md and docs/*.md read as a reader reads them: their commands, their links, their headings' anchors.

Commands come from fenced ```bash, ```sh, ```console (the `$ ` lines) and plain ``` blocks, and from inline code
spans; with `\\` continuations, `# comments`, shell quoting and `&&`, `||`, `|`, `;` chains. A command is
`python train.py ARGS` (also after `torchrun`, `srun`, `mpirun`) or `python -m MODULE ARGS`. Placeholders (DIR,
PATH, REF.jpg) are values like any other. Three substitutions, so that a page may write what a reader reads:
`$VAR` and `${VAR}` become 1 (the shell puts a value there: a count, a rank, a part number, a name), a lone `...` ("more options") is dropped, and
`[--flag]` (an optional flag) becomes `--flag`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL_BLOCKS = {"", "bash", "sh", "shell", "zsh", "console"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
INLINE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SHELL_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
PYTHON = re.compile(r"python(\d+(\.\d+)?)?")
LAUNCHERS = {"torchrun", "srun", "mpirun"}
CONTROL = {"&&", "||", "|", ";", "&"}


@dataclass(frozen=True)
class Command:
    """One command of a page: `python train.py ARGS` (`module` None) or `python -m MODULE ARGS`; `error` says why
    the shell could not split a command line (`module` then "" unless it names train.py)."""

    page: str
    line: int
    text: str
    module: str | None
    args: tuple[str, ...]
    inline: bool
    error: str = ""

    def where(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def lines_in_blocks(text: str) -> Iterator[tuple[int, str, str | None]]:
    """``(number, line, language)`` of a Markdown page; language is None for prose (fence lines are ``"fence"``)."""
    fence, language = None, ""
    for number, line in enumerate(text.splitlines(), 1):
        opening, stripped = FENCE.match(line), line.strip()
        if fence is None and opening:
            fence, language = opening.group(1), opening.group(2).lower()
            yield number, line, "fence"
        elif fence is not None and stripped.startswith(fence) and not stripped.strip(fence[0]):
            fence = None
            yield number, line, "fence"
        else:
            yield number, line, None if fence is None else language


def prose(text: str) -> str:
    """The page with its code blocks blanked (lines kept, so that line numbers stay)."""
    return "\n".join(line if language is None else "" for _, line, language in lines_in_blocks(text))


def snippets(text: str) -> Iterator[tuple[int, str, bool]]:
    """``(line, shell text, inline)`` of a page's shell blocks (continuations joined) and inline code spans."""
    pending: tuple[int, list[str]] | None = None
    for number, line, language in lines_in_blocks(text):
        if language not in SHELL_BLOCKS:
            continue
        stripped = line.strip()
        if pending is None:
            if language == "console" and not stripped.startswith("$ "):
                continue
            pending = (number, [])
            stripped = stripped.removeprefix("$ ") if language == "console" else stripped
        pending[1].append(stripped.removesuffix("\\"))
        if not stripped.endswith("\\"):
            yield pending[0], " ".join(pending[1]), False
            pending = None
    body = prose(text)
    for span in INLINE.finditer(body):
        if "\n\n" not in span.group(2):
            yield body.count("\n", 0, span.start()) + 1, " ".join(span.group(2).split()), True


def segments(shell: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, as argument lists (quotes and comments removed, substitutions made)."""
    lexer = shlex.shlex(SHELL_VAR.sub("1", shell), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    words: list[str] = []
    for token in [*lexer, ";"]:
        if token in CONTROL:
            if words:
                yield words
            words = []
        elif token != "...":
            words.append(token[1:-1] if re.fullmatch(r"\[-[^\]]*\]", token) else token)


def commands_in(name: str, text: str) -> list[Command]:
    """Every `python train.py` and `python -m` command of page `name` (Markdown `text`), in order."""
    found = []
    for line, shell, inline in snippets(text):
        try:
            simple_commands = list(segments(shell))
        except ValueError as err:  # an unclosed quote
            if re.search(r"python|train\.py", shell):
                module = None if "train.py" in shell else ""
                found.append(Command(name, line, shell, module, (), inline, f"the shell cannot split it: {err}"))
            continue
        for words in simple_commands:
            names = [Path(word).name for word in words]
            launched = [i for i, word in enumerate(names) if PYTHON.fullmatch(word) or word in LAUNCHERS]
            if "train.py" in names and launched and launched[0] < names.index("train.py"):
                found.append(Command(name, line, shell, None, tuple(words[names.index("train.py") + 1 :]), inline))
                continue
            for i in launched:
                j = i + 1
                while j < len(words) and words[j].startswith("-") and words[j] != "-m":
                    j += 2 if words[j] in ("-X", "-W") else 1
                if PYTHON.fullmatch(names[i]) and j + 1 < len(words) and words[j] == "-m":
                    found.append(Command(name, line, shell, words[j + 1], tuple(words[j + 2 :]), inline))
                    break
    return found


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page: lower case, punctuation dropped, spaces to hyphens, -1, -2..."""
    seen: dict[str, int] = {}
    for line in prose(page.read_text()).splitlines():
        if line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            seen[f"{slug}-{seen[slug]}" if seen[slug] else slug] = 0
    return set(seen)


def links(page: Path) -> Iterator[tuple[int, str]]:
    """``(line, target)`` of the page's Markdown links and images outside code."""
    text = INLINE.sub(lambda span: re.sub(r"[^\n]", " ", span.group(0)), prose(page.read_text()))
    for link in LINK.finditer(text):
        yield text.count("\n", 0, link.start()) + 1, link.group(1)
