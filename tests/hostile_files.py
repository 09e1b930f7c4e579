"""Files made to hurt a parser, written quickly and with little memory (for the tests and bench.hostile_files)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pypdf

from tests.conftest import EXAMPLES

SAMPLE_DOCX = EXAMPLES / "code-review.docx"
_IMAGE = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/image"
LONG_CHINESE_NAME = ("关于二零二六年度差旅报销住宿标准与审批流程的补充说明" * 5)[:119] + ".md"  # 360 bytes: over the 255 a name may have


def docx_bomb(path: Path, part_mb: int) -> Path:
    """A valid .docx whose document refers to an image part of ``part_mb`` MB of zeros: python-docx
    reads every part a document refers to, and the whole file compresses to about part_mb KB."""
    with zipfile.ZipFile(SAMPLE_DOCX) as sample, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for item in sample.infolist():
            data = sample.read(item.filename)
            if item.filename == "word/_rels/document.xml.rels":
                data = data.replace(
                    b"</Relationships>", f'<Relationship Id="rIdBomb" Type="{_IMAGE}" Target="media/bomb.png"/></Relationships>'.encode()
                )
            if item.filename == "[Content_Types].xml" and b'Extension="png"' not in data:
                data = data.replace(b"<Default ", b'<Default Extension="png" ContentType="image/png"/><Default ', 1)
            out.writestr(item, data)
        with out.open("word/media/bomb.png", "w", force_zip64=True) as part:
            block = b"\0" * (1 << 20)
            for _ in range(part_mb):
                part.write(block)
    return path


def malformed_docx(path: Path) -> Path:
    """A .docx whose document.xml is cut off mid-element (lxml: XMLSyntaxError)."""
    with zipfile.ZipFile(SAMPLE_DOCX) as sample, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for item in sample.infolist():
            data = sample.read(item.filename)
            out.writestr(item, data[: len(data) // 2] if item.filename == "word/document.xml" else data)
    return path


def nested_html(path: Path, depth: int = 5000) -> Path:
    """HTML nested deeper than Python's recursion limit (markdownify: RecursionError)."""
    path.write_text("<html><body>" + "<div>" * depth + "deep text" + "</div>" * depth + "</body></html>")
    return path


def many_page_pdf(path: Path, pages: int) -> Path:
    """Blank pages (1,000 a second or so)."""
    writer = pypdf.PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(72, 72)
    with path.open("wb") as out:
        writer.write(out)
    return path


def slow_pdf(path: Path, content_mb: int) -> Path:
    """One page whose text is ``content_mb`` MB of drawing operators, compressed to a few KB: text
    extraction works through every operator (seconds of CPU per MB)."""
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    writer = pypdf.PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    operators = b"BT /F1 12 Tf 72 712 Td (slow) Tj ET\n"
    stream = StreamObject()
    stream.set_data(operators * (content_mb * 1024 * 1024 // len(operators)))
    page[NameObject("/Contents")] = writer._add_object(stream.flate_encode())
    with path.open("wb") as out:
        writer.write(out)
    return path


def false_count_pdf(path: Path, pages: int, declared: int = 1) -> Path:
    """``pages`` pages of a line of text each, whose page tree says it holds ``declared``: a reader
    trusting /Count lets any number of pages past a page limit (2,000 pages take a fraction of a second)."""
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject, NumberObject

    writer = pypdf.PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for number in range(1, pages + 1):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        text = DecodedStreamObject()
        text.set_data(f"BT /F1 12 Tf 72 712 Td (Page {number} of the appendix.) Tj ET\n".encode())
        page[NameObject("/Contents")] = writer._add_object(text)
    writer.root_object["/Pages"].get_object()[NameObject("/Count")] = NumberObject(declared)
    with path.open("wb") as out:
        writer.write(out)
    return path
