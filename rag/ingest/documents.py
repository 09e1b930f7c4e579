"""Reading knowledge files into Markdown text with a title, whatever their format.

Every format becomes Markdown so that one chunker finds the headings in all of them:
HTML through markdownify, .docx through python-docx's paragraph styles, reStructuredText
through its underlined titles. PDFs keep one part per page so that answers can cite pages.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import TeambotError

MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt", ".text"}
RST_SUFFIXES = {".rst"}
HTML_SUFFIXES = {".html", ".htm"}
SUPPORTED_SUFFIXES = frozenset(MARKDOWN_SUFFIXES | TEXT_SUFFIXES | RST_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"})
TITLE_MAX_CHARS = 120
# Legacy Chinese documents are often GB18030 (a superset of GBK/GB2312) rather than UTF-8.
TEXT_ENCODINGS = ("utf-8-sig", "gb18030")
ZIP_SUFFIXES = frozenset({".docx"})  # formats that are zip archives, checked before they are unpacked
# A .docx has a dozen or two parts, a few hundred with many images; tens of thousands are a zip bomb's.
MAX_ZIP_ENTRIES = 10_000


class DocumentError(TeambotError):
    """A file cannot be read as a knowledge document."""


@dataclass(frozen=True)
class ParseLimits:
    """What one file may make the parser do; over a limit, the file is refused before it is parsed."""

    max_pdf_pages: int = 5000  # rag.max_pdf_pages
    max_unpacked_bytes: int = 200 * 1024 * 1024  # rag.max_unpacked_mb: the parts of a .docx together, uncompressed
    max_zip_entries: int = MAX_ZIP_ENTRIES


@dataclass(frozen=True)
class Part:
    text: str  # Markdown
    page: str | None = None  # page label, for PDFs


@dataclass(frozen=True)
class ParsedDocument:
    title: str
    parts: list[Part]


def supported(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_SUFFIXES


def read_document(path: Path, limits: ParseLimits = ParseLimits()) -> ParsedDocument:
    """Reads one file in this process; raises DocumentError naming the file and what is wrong with it.

    For files from outside (uploads, shared folders), rag.ingest.isolation reads them in a child
    process with memory and CPU limits."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentError(
            f"{path.name}: unsupported file type '{suffix or '(none)'}'",
            f"teambot reads {', '.join(sorted(SUPPORTED_SUFFIXES))}",
        )
    if suffix in ZIP_SUFFIXES:
        check_zip(path, limits)
    if suffix == ".pdf":
        doc = _read_pdf(path, limits)
    elif suffix == ".docx":
        doc = _read_docx(path)
    elif suffix in HTML_SUFFIXES:
        doc = _read_html(path)
    else:
        text = _decode(path)
        if suffix in RST_SUFFIXES:
            text = rst_to_markdown(text)
        doc = ParsedDocument(_title_of(text, path), [Part(text)])
    if not any(part.text.strip() for part in doc.parts):
        hint = "a scanned PDF needs OCR first" if suffix == ".pdf" else "add some text to it, or remove it"
        raise DocumentError(f"{path.name}: no text found", hint)
    return doc


def _decode(path: Path) -> str:
    data = path.read_bytes()
    for encoding in TEXT_ENCODINGS:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DocumentError(f"{path.name}: not a text file in UTF-8 or GB18030", "save it as UTF-8")


def _title_of(markdown: str, path: Path) -> str:
    """The first level-1 heading, else the first short line, else a title made from the file name."""
    lines = [line.strip() for line in markdown.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("# "):
            return line[2:].strip()
    if lines and len(lines[0]) <= TITLE_MAX_CHARS and not lines[0].startswith(("#", "-", "*", "|")):
        return lines[0]
    return title_from_filename(path)


def title_from_filename(path: Path) -> str:
    return re.sub(r"[-_]+", " ", path.stem).strip().capitalize() or path.name


def rst_to_markdown(text: str) -> str:
    """Turns reStructuredText section titles (a line underlined, optionally overlined) into Markdown headings.

    As in docutils, each adornment style (its character, and whether it has an overline) is a
    level, in the order the styles first appear.
    """
    lines = text.splitlines()
    levels: list[tuple[str, bool]] = []
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        under = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _is_adornment(under) and len(under.rstrip()) >= len(line.rstrip()):
            overlined = bool(out) and _is_adornment(out[-1]) and out[-1].strip()[0] == under.strip()[0]
            if overlined:
                out.pop()
            style = (under.strip()[0], overlined)
            if style not in levels:
                levels.append(style)
            out.append("#" * min(levels.index(style) + 1, 6) + " " + line.strip())
            i += 2
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _is_adornment(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= 3 and len(set(stripped)) == 1 and not stripped[0].isalnum() and not stripped[0].isspace()


def check_zip(path: Path, limits: ParseLimits) -> None:
    """Refuses a zip-based file whose parts would unpack to more than the limits (a zip bomb), from
    its directory alone. Python's zipfile never inflates a part past the size its directory gives."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DocumentError(
            f"{path.name}: not a readable {path.suffix.lower()} file ({exc})", "open and re-save it in Word or LibreOffice"
        ) from None
    if len(entries) > limits.max_zip_entries:
        raise DocumentError(
            f"{path.name}: {len(entries):,} parts inside, more than the {limits.max_zip_entries:,} a document may have",
            "this is not an ordinary document (a zip bomb?); open and re-save it in Word or LibreOffice",
        )
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > limits.max_unpacked_bytes:
        raise DocumentError(
            f"{path.name}: unpacks to {unpacked / 1024 / 1024:,.0f} MB, over the limit of rag.max_unpacked_mb = {limits.max_unpacked_bytes / 1024 / 1024:g}",
            "remove large embedded files from it, split it, or raise rag.max_unpacked_mb",
        )


def _read_html(path: Path) -> ParsedDocument:
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(_decode(path), "html.parser")
    title_tag = soup.find("title")
    for tag in soup(["head", "script", "style", "nav", "noscript", "template"]):
        tag.decompose()
    body = soup.body or soup
    try:
        text = MarkdownConverter(heading_style="ATX", strip=["a", "img"]).convert_soup(body)
    except RecursionError:
        raise DocumentError(f"{path.name}: the HTML is nested too deeply to read", "save it as simpler HTML, Markdown or PDF") from None
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    title = title_tag.get_text(strip=True) if title_tag and title_tag.get_text(strip=True) else _title_of(text, path)
    return ParsedDocument(title, [Part(text)])


def _read_docx(path: Path) -> ParsedDocument:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from lxml.etree import XMLSyntaxError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, XMLSyntaxError) as exc:
        raise DocumentError(f"{path.name}: not a readable .docx file ({exc})", "open and re-save it in Word or LibreOffice") from None
    lines = []
    for block in document.iter_inner_content():  # paragraphs and tables, in document order
        if isinstance(block, Table):
            lines.append("\n".join("| " + " | ".join(cell.text.strip() for cell in row.cells) + " |" for row in block.rows))
        elif line := _docx_paragraph_markdown(block):
            lines.append(line)
    markdown = "\n\n".join(lines)
    title = (document.core_properties.title or "").strip() or _title_of(markdown, path)
    return ParsedDocument(title, [Part(markdown)])


def _docx_paragraph_markdown(paragraph: Any) -> str:
    text = paragraph.text.strip()
    style = (paragraph.style.name if paragraph.style is not None else "") or ""
    if not text:
        return ""
    if style == "Title":
        return f"# {text}"
    if match := re.match(r"Heading (\d)", style):
        return "#" * min(int(match.group(1)), 6) + " " + text
    if style.startswith("List"):
        return f"- {text}"
    return text


def _read_pdf(path: Path, limits: ParseLimits) -> ParsedDocument:
    import pypdf
    from pypdf.errors import PyPdfError

    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted:
            raise DocumentError(f"{path.name}: the PDF is encrypted", "upload a copy without a password")
        # The page tree's own count refuses an honest long PDF before the tree is walked; but /Count
        # can say 1 of 100,000 pages, so the pages the walk finds (those read below) are counted too,
        # before any text is read. pypdf's walk stops at 100,000 entries (a LimitReachedError).
        count = reader.root_object["/Pages"].get_object().get("/Count")
        declared = int(count.get_object()) if count is not None else 0
        _check_pages(path, declared, limits)
        pages = reader.pages
        _check_pages(path, len(pages), limits, declared)
        parts = [Part(page.extract_text() or "", page=label) for page, label in zip(pages, reader.page_labels)]
        metadata_title = (reader.metadata.title if reader.metadata else None) or ""
    except DocumentError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, zipfile.BadZipFile, OSError) as exc:
        raise DocumentError(f"{path.name}: not a readable PDF ({exc})", "check that the file opens in a PDF viewer, then upload it again") from None
    first_page = parts[0].text if parts else ""
    title = metadata_title.strip() or _title_of(first_page, path)
    return ParsedDocument(title, parts)


def _check_pages(path: Path, pages: int, limits: ParseLimits, declared: int | None = None) -> None:
    if pages > limits.max_pdf_pages:
        claim = f" (its page tree claims {declared:,})" if declared is not None and declared != pages else ""
        raise DocumentError(
            f"{path.name}: {pages:,} pages{claim}, over the limit of rag.max_pdf_pages = {limits.max_pdf_pages:,}",
            "split it into smaller PDFs, or raise rag.max_pdf_pages",
        )
