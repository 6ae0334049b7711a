"""MkDocs hook: publish the benchmark's own outputs (written by their commands) under assets/benchmarks/.

The how-to pages show these files as the benchmark wrote them, never a pasted copy: regenerate them
with the command given on each page and rebuild the site.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ["benchmarks/step_counts.png"]


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    for rel in ASSETS:
        src = ROOT / rel
        if src.is_file():
            files.append(File.generated(config, f"assets/{rel}", abs_src_path=str(src)))
    return files
