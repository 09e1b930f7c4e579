"""Cutting long text into pieces a chat platform accepts, at natural boundaries, never inside a citation."""

from __future__ import annotations

import re

_CITATION = re.compile(r"\[\d{1,3}\]")
# Preferred cut points, best first: paragraph, line, sentence (Chinese and Latin), word.
_SEPARATORS = ("\n\n", "\n", "。", "！", "？", ". ", "! ", "? ", " ")


def split_text(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at a paragraph, line, sentence or word end, never inside a citation."""
    pieces = []
    while len(text) > limit:
        cut = _cut_point(text, limit)
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text.strip():
        pieces.append(text.rstrip())
    return pieces


def _cut_point(text: str, limit: int) -> int:
    window = text[:limit]
    for separator in _SEPARATORS:
        at = window.rfind(separator)
        if at > limit // 2:
            cut = at + len(separator)
            break
    else:
        cut = limit
    for citation in _CITATION.finditer(text, max(0, cut - 5), cut + 5):  # never split "[12]"
        if citation.start() < cut < citation.end():
            cut = citation.start()
    return cut


