"""MkDocs hook: render the math of every page to MathML at build time (no JavaScript, no CDN).

pymdownx.arithmatex (generic mode) wraps ``$...$`` / ``$$...$$`` in ``<span|div class="arithmatex">``
holding ``\\(...\\)`` / ``\\[...\\]``; this hook converts each with latex2mathml, which browsers render
natively. A formula latex2mathml cannot convert fails the build (so ``mkdocs build --strict`` checks it).
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])\s*</(?P=tag)>',
    re.DOTALL,
)


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    def repl(m: re.Match[str]) -> str:
        block = m.group("block") is not None
        tex = html.unescape(m.group("block") if block else m.group("inline"))
        try:
            return convert(tex, display="block" if block else "inline")
        except Exception as err:  # latex2mathml raises several exception types
            raise PluginError(f"{page.file.src_uri}: cannot render the formula {tex!r} to MathML: {err}") from err

    return _MATH.sub(repl, html_text)
