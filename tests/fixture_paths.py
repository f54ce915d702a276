"""Where the conformance fixtures live: ``tests/fixtures/`` of this repository (what each file holds: its README.md).

Kept free of heavy imports so that `tests.reliability` and `bench/` can name the files too. The fixtures are part of
the repository: a test that needs one never skips when it is missing, it fails and names the file (`require`).
"""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DINOV2 = FIXTURES / "dinov2"
DINOV3 = FIXTURES / "dinov3"
BSDS_COUNTS = FIXTURES / "bsds_counts"
TINY_CHECKPOINT = DINOV2 / "tiny_vit14.pth"
TINY_DINOV3 = DINOV3 / "tiny_vit16_dinov3.pth"
CHECKSUMS = FIXTURES / "SHA256SUMS"


def listed() -> dict[Path, str]:
    """Every fixture file named in SHA256SUMS (``sha256sum`` format), with its SHA-256 hex digest."""
    entries = (line.split(maxsplit=1) for line in CHECKSUMS.read_text().splitlines() if line.strip())
    return {FIXTURES / name.strip(): digest for digest, name in entries}


def require(*paths: Path) -> None:
    """Raise FileNotFoundError naming the first of ``paths`` that is not a file, with the way to restore it."""
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"The conformance fixture {path} is missing. The fixtures are part of the repository: restore them "
                f"with `git checkout -- {FIXTURES.relative_to(FIXTURES.parents[1])}` (what each file holds: "
                f"{FIXTURES / 'README.md'})."
            )
