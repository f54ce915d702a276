"""The conformance fixtures are the repository's own: every file in tests/fixtures is listed with its SHA-256, and is
the file that was listed (a corrupted or replaced fixture would make the golden comparisons compare against
something else)."""

from __future__ import annotations

import hashlib

import pytest

from tests.fixture_paths import CHECKSUMS, FIXTURES, listed, require


def test_every_fixture_file_is_listed() -> None:
    on_disk = {path for path in FIXTURES.rglob("*") if path.is_file()} - {CHECKSUMS, FIXTURES / "README.md"}
    assert on_disk == set(listed()), "update tests/fixtures/SHA256SUMS (`sha256sum dinov2/* dinov3/*` there)"


@pytest.mark.parametrize("path", sorted(listed()), ids=lambda path: str(path.relative_to(FIXTURES)))
def test_fixture_file_is_the_listed_one(path) -> None:
    require(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == listed()[path], f"{path} differs from SHA256SUMS"


def test_missing_fixture_fails_with_its_name(tmp_path) -> None:
    missing = tmp_path / "tiny_vit14.pth"
    with pytest.raises(FileNotFoundError, match="tiny_vit14.pth.*git checkout -- tests/fixtures"):
        require(missing)
