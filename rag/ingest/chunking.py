"""Splitting a parsed document into chunks that carry their heading and position.

llama-index's MarkdownNodeParser cuts at headings (and remembers the heading path);
its SentenceSplitter then cuts long sections at sentence boundaries, Chinese ones included.
Chunk sizes are counted in the embedder's own tokens: it is what reads them (MiniLM reads at
most 256 word pieces), and llama-index's default tokenizer (tiktoken's cl100k) would be
downloaded at first use, which an offline machine cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass

from rag.ingest.documents import ParsedDocument

HEADING_SEPARATOR = " > "
# Separates the heading path MarkdownNodeParser records; a character no heading contains.
_PATH_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Chunk:
    text: str
    heading: str  # the section's heading path, e.g. "Paging > Escalation"; "" before the first heading
    position: int  # 0-based order of the chunk in its document
    page: str | None = None

    def embedding_text(self, title: str) -> str:
        """What the embedder sees: the chunk with its document title and heading, so both count."""
        context = HEADING_SEPARATOR.join(part for part in (title, self.heading) if part)
        return f"{context}\n\n{self.text}" if context else self.text


class Chunker:
    def __init__(self, chunk_size: int, chunk_overlap: int, embed_model: str) -> None:
        from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter

        from rag.ingest.embedder import token_counter

        count = token_counter(embed_model)

        def tokenize(text: str) -> list[int]:
            return [0] * count(text)  # the splitter only counts them

        self._sections = MarkdownNodeParser(header_path_separator=_PATH_SEPARATOR)
        self._splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, tokenizer=tokenize)

    def split(self, doc: ParsedDocument) -> list[Chunk]:
        from llama_index.core.schema import Document

        chunks: list[Chunk] = []
        for part in doc.parts:
            if not part.text.strip():
                continue
            for section in self._sections.get_nodes_from_documents([Document(text=part.text)]):
                heading = _heading(section.metadata.get("header_path", ""), section.text, doc.title)
                for text in self._splitter.split_text(section.text):
                    if text.strip():
                        chunks.append(Chunk(text=text.strip(), heading=heading, position=len(chunks), page=part.page))
        return chunks


def _heading(header_path: str, section_text: str, title: str) -> str:
    """The heading path of a section: its parents (from header_path) and its own heading line."""
    parts = [p for p in header_path.split(_PATH_SEPARATOR) if p]
    first_line = section_text.lstrip().split("\n", 1)[0]
    if first_line.startswith("#"):
        parts.append(first_line.lstrip("#").strip())
    if parts and parts[0] == title:
        parts = parts[1:]
    return HEADING_SEPARATOR.join(parts)
