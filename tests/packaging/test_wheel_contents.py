"""What gets shipped: py.typed and the version in the wheel; the README's link targets in the sdist.

The wheel is built the ordinary way, ``pip wheel . --no-deps``, and the sdist with ``python -m build
--sdist`` (both with build isolation), from a copy of the source tree so that the builds leave nothing
in the checkout.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

import sdediff

ROOT = Path(__file__).resolve().parents[2]
IGNORE = shutil.ignore_patterns(".git", "build", "dist", "site", "*.egg-info", "__pycache__", ".hypothesis",
                                ".pytest_cache", ".ruff_cache", ".venv", "bench_out")


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("src") / "sdediff-src"
    shutil.copytree(ROOT, dst, ignore=IGNORE)
    return dst


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(out)],
                         cwd=source_copy, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    (whl,) = out.glob("sdediff-*.whl")
    return whl


@pytest.fixture(scope="module")
def sdist(source_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    res = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), "."], cwd=source_copy,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    (tgz,) = out.glob("sdediff-*.tar.gz")
    return tgz


def test_wheel_ships_py_typed_and_the_version(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "sdediff/py.typed" in names
    assert "sdediff/__init__.py" in names
    assert not any(n.startswith(("tests/", "docs/", "examples/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert re.search(rf"^Version: {re.escape(sdediff.__version__)}$", text, flags=re.MULTILINE)
    assert re.search(r"^Provides-Extra: docs$", text, flags=re.MULTILINE)


def _members(tgz: Path) -> set[str]:
    with tarfile.open(tgz) as tar:
        return {str(PurePosixPath(*PurePosixPath(m.name).parts[1:])) for m in tar.getmembers() if m.isfile()}


def test_sdist_carries_readme_license_docs_changelog(sdist):
    members = _members(sdist)
    for name in ["README.md", "LICENSE", "CHANGELOG.md", "mkdocs.yml", "docs/theory.md", "docs/fields.md",
                 "sdediff/py.typed", "pyproject.toml"]:
        assert name in members, name


def readme_links(text: str) -> list[str]:
    """Relative link targets of a Markdown text (no URLs, no anchors)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+://|^#|^mailto:", t) and t.split("#")[0]]


def test_readme_links_resolve_in_the_sdist(sdist):
    members = _members(sdist)
    links = readme_links((ROOT / "README.md").read_text())
    assert links, "the README links to nothing?"
    missing = [t for t in links if t.rstrip("/") not in members and not any(m.startswith(t.rstrip("/") + "/")
                                                                            for m in members)]
    assert missing == []


def test_link_check_can_fail():
    assert readme_links("see [a](docs/nowhere.md#x) and [b](https://example.org) and [c](#top)") == \
        ["docs/nowhere.md"]
