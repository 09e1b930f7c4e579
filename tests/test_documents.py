from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.ingest.chunking import Chunker
from rag.ingest.documents import DocumentError, read_document, rst_to_markdown
from rag.search.keyword import KeywordIndex, tokenize
from tests.conftest import EXAMPLES

EXPECTED_TITLES = {
    "oncall-guide.md": "On-call guide",
    "expense-policy-zh.md": "差旅与报销政策",
    "onboarding.html": "Onboarding: your first week",
    "release-process.rst": "Release process",
    "faq.txt": "Team FAQ",
    "security-policy.pdf": "Security policy",
    "code-review.docx": "Code review guidelines",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TITLES))
def test_every_sample_format_reads_with_its_title(name: str) -> None:
    doc = read_document(EXAMPLES / name)
    assert doc.title == EXPECTED_TITLES[name]
    assert sum(len(part.text) for part in doc.parts) > 300


def test_html_keeps_headings_and_drops_navigation() -> None:
    text = read_document(EXAMPLES / "onboarding.html").parts[0].text
    assert "## Your onboarding buddy" in text
    assert "Handbook" not in text  # the <nav> bar
    assert "font-family" not in text  # the <style>


def test_docx_headings_become_markdown() -> None:
    text = read_document(EXAMPLES / "code-review.docx").parts[0].text
    assert "## Approvals" in text and "two approving reviews" in text


def test_pdf_has_one_part_per_page_with_labels() -> None:
    doc = read_document(EXAMPLES / "security-policy.pdf")
    assert [part.page for part in doc.parts] == ["1"]
    assert "full-disk encryption" in doc.parts[0].text


def test_rst_titles_follow_adornment_styles() -> None:
    text = "=====\nTitle\n=====\n\nSection\n=======\n\nSub\n---\n\nBody\n\nOther\n=====\n"
    headings = [line for line in rst_to_markdown(text).splitlines() if line.startswith("#")]
    assert headings == ["# Title", "## Section", "### Sub", "## Other"]


def test_gb18030_text_is_decoded(tmp_path: Path) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes("报销政策\n住宿标准每晚六百元。".encode("gb18030"))
    doc = read_document(path)
    assert doc.title == "报销政策" and "六百元" in doc.parts[0].text


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.pdf", b"%PDF-1.4\n this is not really a pdf", "broken.pdf: not a readable PDF"),
        ("broken.docx", b"PK\x03\x04 not a zip archive", "broken.docx: not a readable .docx"),
        ("image.png", b"\x89PNG\r\n", "image.png: unsupported file type '.png'"),
        ("empty.md", b"   \n\n", "empty.md: no text found"),
        ("binary.txt", b"\xff\xfe\x00\x81\x82\x83\x84" * 10, "binary.txt: not a text file"),
    ],
)
def test_bad_files_raise_a_clear_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentError) as caught:
        read_document(path)
    assert str(caught.value).startswith(message)
    assert caught.value.hint


def test_chunks_carry_heading_path_and_position() -> None:
    doc = read_document(EXAMPLES / "oncall-guide.md")
    chunks = Chunker(chunk_size=200, chunk_overlap=30, embed_model="").split(doc)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    escalation = [c for c in chunks if "secondary on-call engineer. If neither" in c.text]
    assert escalation and escalation[0].heading == "Paging and escalation"
    assert escalation[0].embedding_text(doc.title).startswith("On-call guide > Paging and escalation\n\n")


def test_long_sections_are_split_within_the_chunk_size() -> None:
    from rag.ingest.documents import ParsedDocument, Part

    body = "## Long\n\n" + " ".join(f"Sentence number {i} is here." for i in range(400))
    chunks = Chunker(chunk_size=64, chunk_overlap=8, embed_model="").split(ParsedDocument("T", [Part(body)]))
    assert len(chunks) > 10
    assert all(c.heading == "Long" for c in chunks)
    assert max(len(c.text.split()) for c in chunks) < 64


def test_chunk_sizes_are_counted_in_the_embedders_tokens() -> None:
    """MiniLM reads 256 word pieces at most; chunks must fit in what it reads, Chinese text included."""
    from transformers import AutoTokenizer

    from rag.ingest.documents import ParsedDocument, Part
    from rag.ingest.embedder import model_location

    tokenizer = AutoTokenizer.from_pretrained(model_location(""))
    body = "## 报销\n\n" + "".join(f"第{i}条：出差住宿每晚不超过五百元，需要在三十天内提交发票。" for i in range(60))
    chunks = Chunker(chunk_size=120, chunk_overlap=10, embed_model="").split(ParsedDocument("T", [Part(body)]))
    sizes = [len(tokenizer.encode(c.text, add_special_tokens=False)) for c in chunks]
    assert len(chunks) > 5 and max(sizes) <= 120 and min(sizes) > 30


def test_tokenizer_segments_chinese_and_drops_stopwords() -> None:
    tokens = tokenize("出差住宿每晚可以报销多少钱？What is the Wi-Fi password?")
    assert {"出差", "住宿", "报销", "password", "wi", "fi"} <= set(tokens)
    assert tokenize("releases leaving")  == tokenize("release leave")
    assert "可以" not in tokens and "the" not in tokens and "？" not in tokens


def test_keyword_coverage_is_low_for_unknown_words() -> None:
    corpus = [tokenize(t) for t in ["the release train leaves on tuesday", "expense reports within thirty days", "office wifi"]]
    index = KeywordIndex(corpus)
    hits = index.search(tokenize("when does the release train leave"), limit=3)
    assert hits[0].index == 0 and hits[0].score > 0.5
    unrelated = index.search(tokenize("tungsten boiling point train"), limit=3)
    assert unrelated[0].index == 0 and unrelated[0].score < 0.3  # one shared word among unknown ones
    assert index.search(tokenize("quantum chromodynamics"), limit=3) == []


# --- hostile files ------------------------------------------------------------------------


def test_a_docx_zip_bomb_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    from tests.hostile_files import docx_bomb

    bomb = docx_bomb(tmp_path / "bomb.docx", part_mb=256)  # 256 MB inside, 0.3 MB on disk
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(DocumentError) as caught:
        read_document(bomb)
    assert str(caught.value).startswith("bomb.docx: unpacks to 257 MB, over the limit of rag.max_unpacked_mb = 200")
    assert "rag.max_unpacked_mb" in caught.value.hint


def test_a_malformed_docx_and_deeply_nested_html_are_clear_errors(tmp_path: Path) -> None:
    from tests.hostile_files import malformed_docx, nested_html

    with pytest.raises(DocumentError, match=r"^broken\.docx: not a readable \.docx file"):
        read_document(malformed_docx(tmp_path / "broken.docx"))
    with pytest.raises(DocumentError, match=r"^deep\.html: the HTML is nested too deeply to read"):
        read_document(nested_html(tmp_path / "deep.html"))


def test_a_pdf_over_the_page_limit_is_refused_from_its_page_count(tmp_path: Path) -> None:
    from rag.ingest.documents import ParseLimits
    from tests.hostile_files import many_page_pdf

    pdf = many_page_pdf(tmp_path / "manual.pdf", pages=3000)
    with pytest.raises(DocumentError) as caught:
        read_document(pdf, ParseLimits(max_pdf_pages=1000))
    assert str(caught.value).startswith("manual.pdf: 3,000 pages, over the limit of rag.max_pdf_pages = 1,000")
    with pytest.raises(DocumentError, match="no text found"):  # within the limit it is read (blank pages)
        read_document(pdf, ParseLimits(max_pdf_pages=3000))


def test_the_worker_process_reads_files_within_memory_and_cpu_limits(tmp_path: Path) -> None:
    """Files are parsed in a child process: a file that needs more memory or CPU than allowed fails
    alone with an error naming the setting, and the next file is read by a fresh worker."""
    from rag.ingest.documents import ParseLimits
    from rag.ingest.isolation import DocumentReader
    from tests.hostile_files import docx_bomb, slow_pdf

    no_unpack_limit = ParseLimits(max_unpacked_bytes=1 << 40)
    small = DocumentReader(no_unpack_limit, memory_mb=256, cpu_s=60)
    quick = DocumentReader(ParseLimits(), memory_mb=2048, cpu_s=1)
    try:
        with pytest.raises(DocumentError) as caught:
            small.read(docx_bomb(tmp_path / "bomb.docx", part_mb=300))
        assert str(caught.value).startswith("bomb.docx: reading it needs more memory than rag.parse_memory_mb = 256 allows")
        with pytest.raises(DocumentError) as caught:
            quick.read(slow_pdf(tmp_path / "slow.pdf", content_mb=8))  # tens of seconds of CPU to read
        assert str(caught.value).startswith("slow.pdf: reading it took more than rag.parse_cpu_s = 1 s of CPU")
        for reader in (small, quick):
            assert reader.read(EXAMPLES / "code-review.docx").title == "Code review guidelines"
            assert reader.read(EXAMPLES / "security-policy.pdf").title == "Security policy"
    finally:
        small.close()
        quick.close()


def test_the_worker_does_not_import_modules_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pypdf.py in the directory `teambot serve` runs in (anyone's, in a shared folder) is not
    what the worker parses PDFs with: it starts without the working directory on its path."""
    from rag.ingest.documents import ParseLimits
    from rag.ingest.isolation import DocumentReader

    workdir = tmp_path / "serve-here"
    workdir.mkdir()
    marker = tmp_path / "imported.txt"
    (workdir / "pypdf.py").write_text(f"open({str(marker)!r}, 'w').write('the pypdf.py of the working directory ran')\n")
    monkeypatch.chdir(workdir)
    reader = DocumentReader(ParseLimits(), memory_mb=1024, cpu_s=60)
    try:
        assert reader.read(EXAMPLES / "security-policy.pdf").title == "Security policy"
    finally:
        reader.close()
    assert not marker.exists()


def test_the_worker_is_read_from_in_a_process_with_more_than_1024_open_files(tmp_path: Path) -> None:
    """A busy `teambot serve` holds many descriptors; select() refuses any past 1023, which made
    every parse fail with "filedescriptor out of range" once the worker's pipe got one of those."""
    import resource

    from rag.ingest.documents import ParseLimits
    from rag.ingest.isolation import DocumentReader

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is under 1200")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    held = []
    try:
        while not held or held[-1] < 1100:  # the worker's pipe is opened after these, past 1023
            held.append(os.open(os.devnull, os.O_RDONLY))
        reader = DocumentReader(ParseLimits(), memory_mb=1024, cpu_s=60)
        try:
            assert reader.read(EXAMPLES / "code-review.docx").title == "Code review guidelines"
        finally:
            reader.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
