"""Hostile uploads through the knowledge desk and the console: each file gets its own result,
nothing is left behind, and a replaced file is kept. Real parsers, real Chroma, real HTTP."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from bot.runtime import knowledge_runtime
from config.errors import TeambotError
from config.settings import Settings
from tests.conftest import make_settings
from tests.fake_llm import FakeLLM
from tests.hostile_files import LONG_CHINESE_NAME, docx_bomb, malformed_docx, many_page_pdf, nested_html
from tests.test_console import console_settings, serving, sign_in


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".upload-*"))


async def test_a_batch_of_hostile_files_gets_one_result_per_file(settings: Settings, fake_llm: FakeLLM, tmp_path: Path) -> None:
    assert len(LONG_CHINESE_NAME.encode()) == 360
    files = [
        ("notes.md", b"# Notes\n\nThe bike room code is 4711.\n"),
        ("broken.docx", malformed_docx(tmp_path / "broken.docx").read_bytes()),
        ("deep.html", nested_html(tmp_path / "deep.html").read_bytes()),
        (LONG_CHINESE_NAME, "# 住宿标准\n\n每晚六百元。\n".encode()),
        ("bomb.docx", docx_bomb(tmp_path / "bomb.docx", part_mb=256).read_bytes()),
        ("manual.pdf", many_page_pdf(tmp_path / "manual.pdf", pages=6000).read_bytes()),
        ("after.md", b"# After\n\nThe last file of the batch.\n"),
    ]
    configured = console_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url, rag={"max_file_mb": 2})
    folder = configured.rag.knowledge_dir
    async with serving(configured) as (_, client):
        await sign_in(client)
        upload = await client.post(
            "/admin/api/upload", data={"collection": "default"}, files=[("files", (n, d, "application/octet-stream")) for n, d in files]
        )
        assert upload.status_code == 200, upload.text
        results = {r["file"]: r for r in upload.json()["results"]}
        assert list(results) == [name for name, _ in files]  # every file, in order
        assert results["notes.md"]["ok"] and results["after.md"]["ok"]
        assert results["broken.docx"]["error"].startswith("broken.docx: not a readable .docx file")
        assert results["deep.html"]["error"].startswith("deep.html: the HTML is nested too deeply to read")
        assert results["bomb.docx"]["error"].startswith("bomb.docx: unpacks to 257 MB, over the limit of rag.max_unpacked_mb = 200")
        assert results["manual.pdf"]["error"].startswith("manual.pdf: 6,000 pages, over the limit of rag.max_pdf_pages = 5,000")
        long = results[LONG_CHINESE_NAME]
        assert long["ok"] and long["chunks"] == 1, long
        assert long["name"].endswith(".md") and long["name"].startswith(LONG_CHINESE_NAME[:40]) and len(long["name"].encode()) <= 255

        saved = sorted(p.name for p in folder.iterdir() if p.is_file())
        assert {"notes.md", "after.md", long["name"]} <= set(saved)
        assert not {"broken.docx", "deep.html", "bomb.docx", "manual.pdf"} & set(saved)
        assert leftovers(folder) == []
        documents = {d["path"] for d in (await client.get("/admin/api/documents")).json()["documents"]}
        assert {"notes.md", "after.md", long["name"]} <= documents


async def test_a_replaced_upload_is_kept_as_a_version(settings: Settings, fake_llm: FakeLLM) -> None:
    configured = console_settings(settings.data_dir, settings.rag.knowledge_dir, fake_llm.base_url)
    folder = configured.rag.knowledge_dir
    async with serving(configured) as (_, client):
        await sign_in(client)
        previous = []
        for k in range(3):
            text = f"# Parking\n\nVersion {k}: park in row {k}.\n".encode()
            upload = await client.post(
                "/admin/api/upload", data={"collection": "default"}, files=[("files", ("parking.md", text, "text/markdown"))]
            )
            [result] = upload.json()["results"]
            assert result["ok"] and result["replaced"] == (k > 0), result
            previous.append(result["previous"])
        assert previous[0] is None and all(p and p.startswith(".versions/parking.md/") and p.endswith(".md") for p in previous[1:])
        assert (folder / "parking.md").read_text().startswith("# Parking\n\nVersion 2")
        kept = sorted((folder / ".versions" / "parking.md").iterdir())
        assert [p.read_text().split(":")[0][-9:] for p in kept] == ["Version 0", "Version 1"]
        documents = [d["path"] for d in (await client.get("/admin/api/documents")).json()["documents"]]
        assert documents.count("parking.md") == 1 and not any(".versions" in d for d in documents)  # versions are never indexed

        removed = await client.delete("/admin/api/documents", params={"collection": "default", "path": "parking.md"})
        assert removed.status_code == 200 and removed.json()["kept"].startswith(".versions/parking.md/")
        assert not (folder / "parking.md").exists()
        assert (folder / removed.json()["kept"]).read_text().startswith("# Parking\n\nVersion 2")


def test_a_write_error_fails_that_file_and_leaves_nothing_behind(tmp_path: Path, knowledge: Path) -> None:
    """A file-size limit makes the write fail half-way, as a full disk would."""
    settings = make_settings(tmp_path / "data", knowledge, rag={"max_file_mb": 4})
    before = sorted(p.name for p in knowledge.iterdir())
    with knowledge_runtime(settings) as runtime:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, hard))  # Python ignores SIGXFSZ: writes past it raise EFBIG
        try:
            with pytest.raises(TeambotError) as caught:
                runtime.desk.add("default", "big.md", b"# Big\n\n" + b"words " * 400_000, "test")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert caught.value.message.startswith(f"big.md was not added: it could not be saved in {knowledge}")
    assert "nothing was changed" in caught.value.hint
    assert sorted(p.name for p in knowledge.iterdir()) == before and leftovers(knowledge) == []


def test_only_the_newest_versions_are_kept(tmp_path: Path, knowledge: Path) -> None:
    settings = make_settings(tmp_path / "data", knowledge, rag={"keep_versions": 2})
    with knowledge_runtime(settings) as runtime:
        for k in range(5):
            runtime.desk.add("default", "faq.txt", f"Question {k}?\nAnswer {k}.\n".encode(), "test")
    kept = sorted((knowledge / ".versions" / "faq.txt").iterdir())
    assert [p.read_text().split("?")[0] for p in kept] == ["Question 2", "Question 3"]  # the newest 2 (rag.keep_versions)
    none = make_settings(tmp_path / "data", knowledge, rag={"keep_versions": 0})
    with knowledge_runtime(none) as runtime:
        added = runtime.desk.add("default", "faq.txt", b"Question 5?\nAnswer 5.\n", "test")
    assert added.replaced and added.previous is None and len(list((knowledge / ".versions" / "faq.txt").iterdir())) == 2


def test_a_file_saved_while_the_store_is_locked_is_reported_saved_and_indexed_by_the_next_run(tmp_path: Path, knowledge: Path) -> None:
    """Once the file is saved, a failed index run does not undo that: the reply must say it was
    saved and is not searchable yet (not "nothing was changed"), and the next run indexes it."""
    from bot.desk_replies import added_text
    from bot.slack.adapter import MARKUP
    from tests.test_indexer import _locked

    settings = make_settings(tmp_path / "data", knowledge, rag={"store_timeout_s": 1})
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
        with _locked(runtime.store.path / "chroma.sqlite3"):  # another process writing to the same Chroma store
            added = runtime.desk.add("default", "gym.md", b"# Gym\n\nThe gym is on the ground floor, open from 6 to 22.\n", "test")
        assert (knowledge / "gym.md").exists() and leftovers(knowledge) == []
        assert added.chunks == 0 and added.not_indexed is not None and "locked" in added.not_indexed
        text = added_text(added, MARKUP)
        assert text.startswith(":warning: Added *gym.md* in `default`, but it is not searchable yet: ") and "Nothing was changed" not in text
        report = runtime.indexer.run()  # the lock is gone: the next run (scheduled, or this one) indexes it
        assert report.added == 1 and not report.failed
        assert runtime.retriever.search("When is the gym open?", ["default"]).passages[0].path == "gym.md"
