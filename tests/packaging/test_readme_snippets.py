"""The README cannot rot: its Python snippets run, and its install and test commands are the ones CI runs.

The ```python blocks of README.md and of each how-to page (docs/how-to/*.md) are extracted and run,
one subprocess per file, the blocks of a file in order as one program (a page builds on its earlier
blocks). A block preceded by ``<!-- skip-run -->`` is a fragment and is skipped; a block that only
includes a file with ``--8<--`` is that file, which test_examples_run.py runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"(?P<before>[^\n]*\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE)


def blocks(text: str, lang: str) -> list[str]:
    """The ``lang`` fenced blocks of a Markdown text, without skipped fragments and file includes."""
    out = []
    for m in FENCE.finditer(text):
        if m.group("lang") != lang or "skip-run" in (m.group("before") or ""):
            continue
        code = m.group("code")
        if code.lstrip().startswith("--8<--"):
            continue
        out.append(code)
    return out


def _snippets() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs" / "how-to").glob("*.md"))]:
        code = "\n".join(blocks(path.read_text(), "python")) if path.is_file() else ""
        if code:
            found.append((str(path.relative_to(ROOT)), code))
    return found


SNIPPETS = _snippets()


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_readme_has_a_first_example():
    assert any(name == "README.md" for name, _ in SNIPPETS)


@pytest.mark.parametrize("code", [c for _, c in SNIPPETS], ids=[n for n, _ in SNIPPETS])
def test_snippet_runs(code, tmp_path):
    res = run_python(code, tmp_path)
    assert res.returncode == 0, f"snippet failed:\n{code}\n--- stderr ---\n{res.stderr[-4000:]}"


def test_a_broken_snippet_fails(tmp_path):
    text = "intro\n\n```python\nx = 1\n```\n\n```python\nx / 0\n```\n"
    code = "\n".join(blocks(text, "python"))
    assert run_python(code, tmp_path).returncode != 0


def test_extraction_skips_fragments_and_includes():
    text = ("```python\nprint(1)\n```\n<!-- skip-run -->\n```python\nundefined_name\n```\n"
            "```python\n--8<-- \"examples/x.py\"\n```\n```bash\nls\n```\n")
    assert blocks(text, "python") == ["print(1)\n"]


def _commands(text: str) -> list[str]:
    lines = []
    for code in blocks(text, "bash"):
        lines += [line.split("#")[0].strip() for line in code.splitlines()]
    return [line for line in lines if line]


def test_readme_install_and_test_commands_are_what_ci_runs():
    readme = _commands((ROOT / "README.md").read_text())
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    install = [c for c in readme if c.startswith("pip install \".")]
    assert install == ['pip install ".[test,bench,docs]"'], install
    assert install[0] in ci, "the README's install line must be the line .ci/run runs"
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci
    # the extras the README installs exist in pyproject.toml
    pyproject = (ROOT / "pyproject.toml").read_text()
    for extra in re.search(r"\[(.*)\]", install[0]).group(1).split(","):
        assert re.search(rf"^{extra} = \[", pyproject, flags=re.MULTILINE), extra
