"""Markdown links in text teambot did not write (a document's words, the model's answer built
from them): shown with their target in plain sight, never as a masked link. Pure functions.

``[click](http://evil.example)`` would show "click" and lead elsewhere; a reference
definition (``[1]: http://evil.example``) would turn ``[click][1]`` into the same. Both are
rewritten so the reader sees where a link goes; each platform decides how the target looks.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_LABEL = r"\[((?:\[[^\[\]\n]*\]|[^\[\]\n])*)\]"  # one level of [brackets] inside, as Discord's parser allows
# An inline link: [label](target) or [label](<target>), an optional "title" ignored like the rest.
# Targets and titles are bounded (longer ones stay as written), which keeps every search linear.
INLINE_LINK = re.compile(_LABEL + r"\([ \t]*<?([^)\s>]{0,2000})(?:[ \t>][^)\n]{0,200})?\)")
# A reference definition at a line's start: "[1]: http://…" (what makes [text][1] a link).
REFERENCE = re.compile(r"^( {0,3})" + _LABEL + r":", re.MULTILINE)
# The end of a text that may still grow into a link (or a definition): held back while streaming.
_UNFINISHED = re.compile(r"\[(?:\[[^\[\]\n]*\]|[^\[\]\n])*(?:\[[^\[\]\n]*)?(?:\](?::|\([^)\n]{0,2300})?)?\Z")


def show_targets(text: str, target: Callable[[str], str]) -> str:
    """Every Markdown link as ``label (target)``, the target as ``target`` renders it; definitions lose their brackets."""

    def inline(match: re.Match[str]) -> str:
        label, url = match.group(1).strip(), match.group(2)
        if not url:
            return label
        return f"{label} ({target(url)})" if label and label != url else target(url)

    while True:  # until no link is left: "[[a](b)](c)" hides a link inside another
        text, found = INLINE_LINK.subn(inline, text)
        if not found:
            return REFERENCE.sub(r"\1\2:", text)


def settled(text: str) -> str:
    """The part of a growing text that no later text can turn into a link: all but an unfinished ``[…`` at its end."""
    match = _UNFINISHED.search(text)
    return text[: match.start()] if match else text
