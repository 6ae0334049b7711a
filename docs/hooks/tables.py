"""MkDocs hook: tables generated from the package at build time, so they cannot go stale.

* ``<!-- sdediff-namespace -->`` (reference/sdediff.md) becomes one row per name in ``sdediff.__all__``:
  a cross-reference to where the name is documented (its defining module's page), its kind and the
  first sentence of its docstring. The cross-references are required ones, so a public name that no
  reference page renders fails ``mkdocs build --strict``.
* ``<!-- registry: sdediff.solvers.SOLVERS -->`` becomes the registry's contents: each key, the object
  it maps to, and the attributes ``order``, ``stochastic``, ``adaptive`` where the objects have them.
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


REGISTRY = re.compile(r"<!-- registry: ([\w.]+) -->")
ATTRS = ("order", "stochastic", "adaptive")


def _ref(obj: Any) -> str:
    if inspect.isfunction(obj) or inspect.isclass(obj):
        target, shown = obj, obj.__name__
    else:
        target, shown = type(obj), type(obj).__name__
    ident = f"{target.__module__}.{target.__qualname__}"
    if any(part.startswith("_") for part in ident.split(".")):
        return f"`{shown}`"
    return f'<autoref identifier="{ident}" optional><code>{shown}</code></autoref>'


def registry_table(path: str) -> str:
    module, _, name = path.rpartition(".")
    registry = getattr(importlib.import_module(module), name)
    values = list(registry.values())
    attrs = [a for a in ATTRS if values and all(hasattr(v, a) for v in values)]
    head = "| name | object | " + " | ".join(attrs) + (" |" if attrs else "") + "\n"
    head += "|---|---|" + "---|" * len(attrs) + "\n"
    rows = [f"| `{key}` | {_ref(value)} | " + " | ".join(f"{getattr(value, a)}" for a in attrs)
            + (" |" if attrs else "") for key, value in registry.items()]
    return head + "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER not in markdown and not REGISTRY.search(markdown):
        return markdown
    sys.path.insert(0, str(ROOT))
    try:
        pkg = importlib.import_module("sdediff")
        if MARKER in markdown:
            tree = griffe.load("sdediff", search_paths=[str(ROOT)])
            rows = [_row(pkg, name, tree) for name in pkg.__all__]
            markdown = markdown.replace(MARKER, "| name | kind | summary |\n|---|---|---|\n" + "\n".join(rows))
        return REGISTRY.sub(lambda m: registry_table(m.group(1)), markdown)
    finally:
        sys.path.remove(str(ROOT))
