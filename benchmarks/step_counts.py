"""Full step-count benchmark: every registered solver vs diffusers' schedulers and torchdiffeq's dopri5.

    python benchmarks/step_counts.py            # writes benchmarks/step_counts.{md,csv,png}

The code lives in :mod:`sdediff.bench` (``sdediff bench`` runs a reduced version).
"""

from __future__ import annotations

import sys

from sdediff.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--full", "--out", "benchmarks", "--name", "step_counts", *sys.argv[1:]]))
