"""Griffe extension for the docs build: the reST bits of sdediff's docstrings, read as Markdown.

sdediff's docstrings are Google style with a few reStructuredText habits that read well in the
source: Sphinx roles (``:func:`sdediff.solve```, ``:class:`~sdediff.errors.SolverError```,
``:data:`SOLVERS```, ``:mod:`.euler```), inline math (``:math:`\\alpha_t```), simple tables
(``=====  =====`` borders) and literal blocks introduced by ``::``. Rather than rewrite the
docstrings, this extension translates them while mkdocstrings loads the package:

* a role becomes a cross-reference when its target resolves in the package (relative names are
  looked up from the object outwards, as Sphinx does); the reference is *optional*, so a target
  that no page renders (a private helper) shows as code instead of failing ``mkdocs build --strict``;
* ``:math:`...``` becomes ``$...$`` and ``.. math::`` a ``$$`` block (pymdownx.arithmatex; the
  ``mathml.py`` hook renders them to MathML);
* ``a, b: description`` in an Args section becomes one entry per name;
* a simple table becomes a Markdown table; a trailing ``::`` becomes ``:`` (the indented block
  after it is already a Markdown code block).

Configured in mkdocs.yml under ``plugins > mkdocstrings > handlers > python > options > extensions``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(func|class|meth|attr|data|obj|exc|mod|const):`([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_BORDER = re.compile(r"^\s*=+(?:\s+=+)+\s*$")


def _lookup(root: griffe.Module, path: str) -> Any:
    parts = path.split(".")
    if parts[0] != root.name:
        return None
    obj: Any = root
    for part in parts[1:]:
        try:
            obj = obj.members[part]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return obj


def _canonical(obj: Any) -> str:
    if obj.is_alias:
        try:
            return obj.final_target.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return obj.path
    return obj.path


def _resolve(root: griffe.Module, where: Any, target: str) -> str | None:
    """The full path of ``target`` as seen from the object ``where`` (Sphinx's lookup order)."""
    candidates = []
    if target.startswith("."):
        module = where if where.is_module else where.module
        candidates.append(module.path + target)
    elif target.split(".")[0] == root.name:
        candidates.append(target)
    else:
        scope = where
        while scope is not None:
            candidates.append(f"{scope.path}.{target}")
            scope = scope.parent
    for path in candidates:
        obj = _lookup(root, path)
        if obj is not None:
            return _canonical(obj)
    return None


def _roles(text: str, root: griffe.Module, where: Any) -> str:
    def repl(m: re.Match[str]) -> str:
        target = m.group(2).strip()
        short = target.startswith("~")
        target = target.lstrip("~").removesuffix("()")
        shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        path = _resolve(root, where, target)
        if path is None:
            return f"`{shown}`"
        return f'<autoref identifier="{html.escape(path)}" optional><code>{html.escape(shown)}</code></autoref>'

    return _ROLE.sub(repl, text)


def _cells(line: str, starts: list[int]) -> list[str]:
    parts = re.split(r"\s{2,}", line.strip())
    if len(parts) == len(starts):
        return parts
    bounds = [*starts[1:], None]
    return [line[a:b].strip() for a, b in zip(starts, bounds, strict=True)]


def _tables(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _BORDER.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        indent = border[: len(border) - len(border.lstrip())]
        starts = [m.start() for m in re.finditer(r"=+", border)]
        rows: list[list[str]] = []
        n_borders, j = 1, i + 1
        header_rows = 0
        while j < len(lines) and n_borders < 3:
            if _BORDER.match(lines[j]):
                n_borders += 1
                if n_borders == 2:
                    header_rows = len(rows)
            elif lines[j].strip():
                rows.append(_cells(lines[j], starts))
            j += 1
        if n_borders < 3 or header_rows == 0:  # not a simple table with a header: leave it alone
            out.append(lines[i])
            i += 1
            continue
        header, body = rows[:header_rows], rows[header_rows:]
        head = [" ".join(col).strip() for col in zip(*header, strict=True)]
        out.append(indent + "| " + " | ".join(c.replace("|", "\\|") for c in head) + " |")
        out.append(indent + "|" + "---|" * len(head))
        out.extend(indent + "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body)
        i = j
    return "\n".join(out)


_DIRECTIVE = re.compile(r"^(\s*)\.\. math::[ \t]*(.*)$")


def _math_blocks(text: str) -> str:
    """``.. math:: formula`` (continued on more-indented lines) becomes a ``$$`` display block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if m is None:
            out.append(lines[i])
            i += 1
            continue
        indent, body = m.group(1), [m.group(2).strip()] if m.group(2).strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            if lines[i].strip():
                body.append(lines[i].strip())
            elif body and i + 1 < len(lines) and len(lines[i + 1]) - len(lines[i + 1].lstrip()) <= len(indent):
                break
            i += 1
        if 0 < len(indent) < 4:  # inside a reST bullet ("* text" + 2 spaces): Markdown continues list items at 4
            indent = "    "
        out.extend(["", indent + "$$", *(indent + b for b in body), indent + "$$", ""])
    return "\n".join(out)


def _literal_blocks(text: str) -> str:
    return re.sub(r"(\S)::[ \t]*$", r"\1:", text, flags=re.MULTILINE)


_SECTION = re.compile(r"^(\s*)(?:Args|Arguments|Parameters|Params):\s*$")
_GROUPED = re.compile(r"^(\s+)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+)\s*(\([^)]*\))?:(.*)$")


def _grouped_params(text: str) -> str:
    """``t0, t1: the end points`` in an Args section becomes one entry per name (same description)."""
    lines = text.split("\n")
    out: list[str] = []
    section: str | None = None  # indent of the current Args header
    i = 0
    while i < len(lines):
        line = lines[i]
        head = _SECTION.match(line)
        if head:
            section = head.group(1)
        elif line.strip() and section is not None and len(line) - len(line.lstrip()) <= len(section):
            section = None
        m = _GROUPED.match(line) if section is not None else None
        if m is None:
            out.append(line)
            i += 1
            continue
        indent, names, kind, first = m.group(1), m.group(2), m.group(3) or "", m.group(4)
        rest = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            rest.append(lines[i])
            i += 1
        while rest and not rest[-1].strip():
            rest.pop()
            i -= 1
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{indent}{name}{' ' + kind if kind else ''}:{first}")
            out.extend(rest)
    return "\n".join(out)


def translate(text: str, root: griffe.Module, where: Any) -> str:
    """The docstring ``text`` of ``where`` with its reST roles, math, tables and ``::`` made Markdown."""
    text = _math_blocks(text)
    text = _MATH.sub(lambda m: f"${m.group(1).strip()}$", text)
    text = _roles(text, root, where)
    text = _tables(text)
    text = _grouped_params(text)
    return _literal_blocks(text)


class ReSTInMarkdown(griffe.Extension):
    """Translate every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[Any] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.is_alias or id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = translate(obj.docstring.value, pkg, obj)
            stack.extend(obj.members.values())
