"""Every script in examples/ runs at its default (small) size and exits 0.

The examples check their own claims and exit 1 when one fails (the continuity check must accept the
right field and reject the wrong one; the likelihoods must match the closed form; errors must fall
with NFE), so this test fails when they do. Each runs in a fresh directory, where it writes its files.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run_example(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, str(path)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_there_are_examples():
    assert {"choose_solver.py", "likelihoods.py", "custom_force_field.py"} <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    res = run_example(path, tmp_path)
    assert res.returncode == 0, f"{path.name} failed:\n{res.stdout[-3000:]}\n--- stderr ---\n{res.stderr[-3000:]}"
    assert res.stdout.strip(), f"{path.name} printed nothing"
    if importlib.util.find_spec("matplotlib") is not None:  # each example writes its plot, <name>.png
        assert (tmp_path / f"{path.stem}.png").stat().st_size > 0


def test_a_failing_example_fails_the_test(tmp_path):
    bad = tmp_path / "bad_example.py"
    bad.write_text("print('checking')\nraise SystemExit(1)\n")
    assert run_example(bad, tmp_path).returncode == 1
