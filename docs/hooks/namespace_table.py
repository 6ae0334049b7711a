"""MkDocs hook: the table of the top-level namespace (every name in ``sdediff.__all__``) on reference/sdediff.md.

The page holds the marker ``<!-- sdediff-namespace -->``; this hook replaces it with one row per
exported name: a cross-reference to where the name is documented (its defining module's page), its
kind and the first sentence of its docstring. The cross-references are required ones, so a public
name that no reference page renders fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- sdediff-namespace -->"
_ROLE = re.compile(r":(?:py:)?\w+:`~?\.?([^`]+)`")


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    text = re.sub(r":math:`([^`]+)`", r"$\1$", text)
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    # a sentence ends at . ! ? before a capital or the end, not at "et al." / "e.g." / "i.e."
    m = re.search(r"^(.+?(?<!\bal)(?<!\be\.g)(?<!\bi\.e)[.!?])(?=\s+[A-Z(]|$)", text)
    return (m.group(1) if m else text).replace("|", "\\|")


def _row(pkg: Any, name: str, tree: griffe.Module) -> str:
    obj = getattr(pkg, name)
    if inspect.ismodule(obj):
        return f"| [`{name}`][{obj.__name__}] | module | {_first_sentence(obj.__doc__)} |"
    if inspect.isclass(obj) or inspect.isfunction(obj):
        kind = "class" if inspect.isclass(obj) else "function"
        return f"| [`{name}`][{obj.__module__}.{obj.__qualname__}] | {kind} | {_first_sentence(obj.__doc__)} |"
    for mod_name in sorted(m for m in sys.modules if m.startswith(pkg.__name__ + ".")):
        mod = sys.modules[mod_name]
        if name in getattr(mod, "__all__", ()) and mod.__dict__.get(name) is obj and name in tree[mod_name[len(
                pkg.__name__) + 1:]].members:
            member = tree[mod_name[len(pkg.__name__) + 1:]].members[name]
            if not member.is_alias:
                doc = member.docstring.value if member.docstring else None
                return f"| [`{name}`][{mod_name}.{name}] | data | {_first_sentence(doc)} |"
    return f"| `{name}` | {type(obj).__name__} | `{obj!r}` |"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    sys.path.insert(0, str(ROOT))
    try:
        pkg = importlib.import_module("sdediff")
        tree = griffe.load("sdediff", search_paths=[str(ROOT)])
    finally:
        sys.path.remove(str(ROOT))
    rows = [_row(pkg, name, tree) for name in pkg.__all__]
    table = "| name | kind | summary |\n|---|---|---|\n" + "\n".join(rows)
    return markdown.replace(MARKER, table)
