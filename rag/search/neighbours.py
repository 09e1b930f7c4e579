"""The text shown of each retrieved chunk: the chunk widened with its neighbours (rag.neighbours).

A chunk of 200 tokens often holds the sentence a question matched but not the one that answers
it (the value, the command, the next step): those are in the chunk before or after. So each
retrieved chunk is shown with up to rag.neighbours chunks on each side, from the same file and
the same section (heading path and page), in order, with the overlap between consecutive chunks
(rag.chunk_overlap) taken out so no text is repeated. Two retrieved chunks of one file that
touch or overlap once widened become one passage, at the place of the better one.

Only the text shown grows: which chunks are retrieved, their order and the relevance decision
stay on the chunks themselves. The retrieved chunks are always shown whole; neighbours are added
to the best passages first, nearest first, while all the passages together stay within
rag.context_tokens (counted as rag.chunk_size is, in the embedder's tokens), so the prompt keeps
its room in the model's context.

A chunk is found by its document and position (the ``document_id`` and ``position`` metadata the
indexer writes; its id is ``chunk_id_for(document, position)``). A chunk without them (an index
written before they were) is shown as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from rag.ingest.indexer import chunk_id_for
from rag.store.chroma import ChromaStore, StoredChunk

log = logging.getLogger(__name__)

MIN_OVERLAP_CHARS = 4  # a shorter match of one chunk's end and the next one's start may be chance: kept twice
JOINT = "\n"  # between consecutive chunks that do not overlap (the chunker dropped the whitespace there)


@dataclass(frozen=True)
class Shown:
    """One passage's text: the retrieved chunk ``hit`` (an index into the hits, the best one it holds), widened."""

    hit: int
    text: str
    chunk_ids: tuple[str, ...]  # the chunks it shows, in order (more than one retrieved chunk when they were merged)


_Key = tuple[str, str, int]  # collection, document, position
_reported: set[str] = set()  # collections already reported to hold chunks without their position


def widened(
    hits: Sequence[tuple[str, StoredChunk]], store: ChromaStore, each_side: int, budget_tokens: int, count_tokens: Callable[[str], int]
) -> list[Shown]:
    """The passages to show for ``hits`` (collection and chunk, best first): each widened by up to
    ``each_side`` chunks on each side within ``budget_tokens`` in all, touching ones merged."""
    if each_side <= 0:
        return [Shown(k, chunk.text, (chunk.id,)) for k, (_, chunk) in enumerate(hits)]
    places = {k: _place(collection, chunk) for k, (collection, chunk) in enumerate(hits)}
    for k, place in places.items():
        collection = hits[k][0]
        if place is None and collection not in _reported:
            _reported.add(collection)
            log.warning(
                "collection %s holds chunks indexed without their position: they are shown without their neighbours "
                "(rag.neighbours); `teambot index --collection %s --rebuild` indexes them with it",
                collection,
                collection,
            )
    chunks: dict[_Key, StoredChunk] = {key: hits[k][1] for k, key in places.items() if key is not None}
    chunks.update(_neighbours(store, [key for key in places.values() if key is not None], each_side, chunks.keys()))

    shown_keys = set(chunks.keys() & {key for key in places.values() if key is not None})
    used = sum(count_tokens(chunk.text) for _, chunk in hits)
    for k, (_, hit) in enumerate(hits):
        key = places[k]
        if key is None:
            continue
        collection, document, position = key
        open_sides = {-1, 1}
        for distance in range(1, each_side + 1):
            for side in (-1, 1):
                if side not in open_sides:
                    continue
                near = (collection, document, position + side * distance)
                neighbour = chunks.get(near)
                if neighbour is None or not _same_section(neighbour, hit):
                    open_sides.discard(side)
                    continue
                if near in shown_keys:
                    continue
                cost = count_tokens(neighbour.text)
                if used + cost > budget_tokens:
                    open_sides.discard(side)
                    continue
                shown_keys.add(near)
                used += cost

    passages: list[Shown] = []
    taken: set[_Key] = set()
    for k, (_, hit) in enumerate(hits):
        key = places[k]
        if key is None:
            passages.append(Shown(k, hit.text, (hit.id,)))
            continue
        if key in taken:
            continue  # shown in a better passage of the same file
        collection, document, position = key
        first = last = position
        while (before := (collection, document, first - 1)) in shown_keys and _same_section(chunks[before], hit):
            first -= 1
        while (after := (collection, document, last + 1)) in shown_keys and _same_section(chunks[after], hit):
            last += 1
        span = [chunks[(collection, document, p)] for p in range(first, last + 1)]
        taken.update((collection, document, p) for p in range(first, last + 1))
        passages.append(Shown(k, joined([chunk.text for chunk in span]), tuple(chunk.id for chunk in span)))
    return passages


def joined(texts: Sequence[str]) -> str:
    """Consecutive chunks' texts as one, the overlap of each with the one before it taken out."""
    out = texts[0] if texts else ""
    for previous, text in pairwise(texts):
        shared = overlap(previous, text)
        out += text[shared:] if shared else JOINT + text
    return out


def overlap(before: str, after: str) -> int:
    """The length of the longest end of ``before`` that ``after`` starts with (0 below MIN_OVERLAP_CHARS)."""
    if not after:
        return 0
    start = before.find(after[0], max(0, len(before) - len(after)))
    while start != -1 and len(before) - start >= MIN_OVERLAP_CHARS:
        if after.startswith(before[start:]):
            return len(before) - start
        start = before.find(after[0], start + 1)
    return 0


def _place(collection: str, chunk: StoredChunk) -> _Key | None:
    """Where the chunk is in its document; None for a chunk stored without its position."""
    position, document = chunk.metadata.get("position"), chunk.metadata.get("document_id")
    if isinstance(position, bool) or not isinstance(position, int) or not isinstance(document, str) or not document:
        return None
    return collection, document, position


def _same_section(chunk: StoredChunk, of: StoredChunk) -> bool:
    return all(chunk.metadata.get(name, "") == of.metadata.get(name, "") for name in ("heading", "page"))


def _neighbours(store: ChromaStore, places: Sequence[_Key], each_side: int, known: Sequence[_Key] | set[_Key]) -> dict[_Key, StoredChunk]:
    """The chunks within ``each_side`` positions of ``places`` that are not ``known``, one read per collection."""
    wanted: dict[str, set[str]] = {}
    for collection, document, position in places:
        for distance in range(-each_side, each_side + 1):
            near = (collection, document, position + distance)
            if near[2] >= 0 and near not in known:
                wanted.setdefault(collection, set()).add(chunk_id_for(document, near[2]))
    found: dict[_Key, StoredChunk] = {}
    for collection, ids in wanted.items():
        for chunk in store.get(collection, sorted(ids)):
            key = _place(collection, chunk)
            if key is not None:
                found[key] = chunk
    return found
