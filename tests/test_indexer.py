"""Incremental indexing against the real Chroma store and the real MiniLM embedder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from llama_index.core.schema import TextNode

from bot.runtime import Runtime, knowledge_runtime
from config.errors import ConfigError, StoreError, TeambotError
from config.settings import Settings
from rag.store.chroma import ChromaStore
from tests.conftest import EXAMPLES, make_settings

SAMPLE_FILES = len(list(EXAMPLES.iterdir()))


@pytest.fixture
def runtime(settings: Settings) -> Runtime:
    with knowledge_runtime(settings) as runtime:
        yield runtime


def chunk_ids_by_source(runtime: Runtime, collection: str = "default") -> dict[str, list[str]]:
    by_source: dict[str, list[str]] = defaultdict(list)
    for chunk in runtime.store.get(collection, texts=False):
        by_source[chunk.metadata["source"]].append(chunk.id)
    return {source: sorted(ids) for source, ids in by_source.items()}


def assert_consistent(runtime: Runtime, collection: str = "default") -> None:
    """Chroma holds exactly the chunks the manifest lists: no duplicates, no orphans."""
    records = runtime.manifest.files(collection)
    expected = {r.path: r.chunks for r in records.values() if r.chunks}
    stored = chunk_ids_by_source(runtime, collection)
    assert {source: len(ids) for source, ids in stored.items()} == expected
    for source, ids in stored.items():
        doc_id = ids[0].split(":")[0]
        assert ids == sorted(f"{doc_id}:{k}" for k in range(len(ids))), source


def test_first_index_adds_every_sample_file(runtime: Runtime) -> None:
    report = runtime.indexer.run()
    assert (report.added, report.updated, report.deleted, report.unchanged, report.failed) == (SAMPLE_FILES, 0, 0, 0, [])
    assert report.chunks == report.total_chunks == runtime.store.count("default") > SAMPLE_FILES
    chunk = next(c for c in runtime.store.get("default") if c.metadata["source"] == "oncall-guide.md" and "escalates" in c.text)
    assert chunk.metadata["title"] == "On-call guide"
    assert chunk.metadata["heading"] == "Paging and escalation"
    assert isinstance(chunk.metadata["position"], int)
    pdf = next(c for c in runtime.store.get("default") if c.metadata["source"] == "security-policy.pdf")
    assert pdf.metadata["page"] == "1"
    assert_consistent(runtime)


def test_unchanged_edited_and_deleted_files(runtime: Runtime, knowledge: Path) -> None:
    runtime.indexer.run()
    before = chunk_ids_by_source(runtime)

    again = runtime.indexer.run()
    assert (again.added, again.updated, again.deleted, again.unchanged, again.chunks) == (0, 0, 0, SAMPLE_FILES, 0)
    assert chunk_ids_by_source(runtime) == before

    faq = knowledge / "faq.txt"
    faq.write_text(faq.read_text() + "\nWhere is the bike storage?\nIn the basement, behind the blue door.\n")
    edited = runtime.indexer.run()
    assert (edited.added, edited.updated, edited.unchanged) == (0, 1, SAMPLE_FILES - 1)
    after = chunk_ids_by_source(runtime)
    assert edited.chunks == len(after["faq.txt"])  # only the edited file was embedded
    assert {s: ids for s, ids in after.items() if s != "faq.txt"} == {s: ids for s, ids in before.items() if s != "faq.txt"}
    assert any("blue door" in c.text for c in runtime.store.get("default") if c.metadata["source"] == "faq.txt")

    (knowledge / "release-process.rst").unlink()
    removed = runtime.indexer.run()
    assert (removed.deleted, removed.unchanged, removed.chunks) == (1, SAMPLE_FILES - 1, 0)
    assert "release-process.rst" not in chunk_ids_by_source(runtime)
    assert_consistent(runtime)


def test_bad_files_are_reported_and_the_rest_indexed(runtime: Runtime, knowledge: Path) -> None:
    (knowledge / "corrupt.pdf").write_bytes(b"%PDF-1.7\n garbage that is not a pdf body")
    (knowledge / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (knowledge / ".hidden.md").write_text("# hidden\nnot indexed")
    report = runtime.indexer.run()
    failed = {f["path"]: f["error"] for f in report.failed}
    assert set(failed) == {"corrupt.pdf", "photo.png"}
    assert "not a readable PDF" in failed["corrupt.pdf"]
    assert "unsupported file type '.png'" in failed["photo.png"]
    assert report.added == SAMPLE_FILES
    assert_consistent(runtime)

    again = runtime.indexer.run()  # still reported, not parsed again, nothing else touched
    assert {f["path"] for f in again.failed} == {"corrupt.pdf", "photo.png"}
    assert again.unchanged == SAMPLE_FILES and again.chunks == 0


def test_a_file_that_breaks_keeps_its_old_chunks(runtime: Runtime, knowledge: Path) -> None:
    runtime.indexer.run()
    before = chunk_ids_by_source(runtime)["security-policy.pdf"]
    (knowledge / "security-policy.pdf").write_bytes(b"%PDF-1.7 truncated")
    report = runtime.indexer.run()
    assert [f["path"] for f in report.failed] == ["security-policy.pdf"]
    assert chunk_ids_by_source(runtime)["security-policy.pdf"] == before
    shutil.copy(EXAMPLES / "security-policy.pdf", knowledge / "security-policy.pdf")
    fixed = runtime.indexer.run()
    assert fixed.updated == 1 and not fixed.failed


def test_links_that_leave_the_folder_are_not_followed_and_what_they_put_in_is_removed(
    runtime: Runtime, knowledge: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "outside" / "environ.txt"
    secret.parent.mkdir()
    secret.write_text("SLACK_BOT_TOKEN=xoxb-not-for-chat-users\nTEAMBOT_ADMIN_TOKEN=also-secret\n")
    (knowledge / "sub").mkdir()
    (knowledge / "sub" / "kept.md").write_text("# Kept\n\nThe bike room is in the basement.\n")
    (knowledge / "environ.txt").symlink_to(secret)  # a link to a file outside: never read
    (knowledge / "passwd.txt").symlink_to("/etc/passwd")
    (knowledge / "escape").symlink_to(secret.parent, target_is_directory=True)  # a link to a folder: never walked
    (knowledge / "loop").symlink_to(knowledge, target_is_directory=True)
    (knowledge / "gone.md").symlink_to(tmp_path / "nothing.md")
    (knowledge / "alias.md").symlink_to(knowledge / "sub" / "kept.md")  # a link inside the folder: read
    report = runtime.indexer.run()
    failed = {f["path"]: f["error"] for f in report.failed}
    assert set(failed) == {"environ.txt", "passwd.txt", "escape", "loop", "gone.md"}
    assert "a link to a file outside the knowledge folder" in failed["environ.txt"] and "copy the file in instead" in failed["environ.txt"]
    assert "a link to a folder" in failed["escape"] and "a link to nothing" in failed["gone.md"]
    assert str(secret) not in " ".join(failed.values())  # where a link leads is not reported (the report reaches chat on an upload)
    assert report.added == SAMPLE_FILES + 2
    indexed = " ".join(c.text for c in runtime.store.get("default"))
    assert "xoxb" not in indexed and "root:" not in indexed
    found = runtime.retriever.search("What is SLACK_BOT_TOKEN set to?", ["default"], min_score=0.0).passages
    assert found and all("xoxb" not in p.text for p in found)
    assert_consistent(runtime)

    # A file indexed before (by a version that followed links, or before it became a link) loses its chunks.
    (knowledge / "alias.md").unlink()
    (knowledge / "alias.md").symlink_to(secret)
    again = runtime.indexer.run()
    assert again.deleted == 1 and "alias.md" in {f["path"] for f in again.failed}
    assert "alias.md" not in chunk_ids_by_source(runtime)
    assert all("xoxb" not in c.text for c in runtime.store.get("default"))
    assert_consistent(runtime)


def test_oversized_file_is_refused(tmp_path: Path, knowledge: Path) -> None:
    settings = make_settings(tmp_path / "data", knowledge, rag={"max_file_mb": 0.001})
    with knowledge_runtime(settings) as runtime:
        report = runtime.indexer.run()
    big = {f["path"]: f["error"] for f in report.failed}
    assert "code-review.docx" in big and "over the limit of rag.max_file_mb = 0.001" in big["code-review.docx"]
    assert report.added == sum(1 for p in knowledge.iterdir() if p.stat().st_size <= 1048)


def test_a_pdf_whose_page_tree_understates_its_pages_is_refused_by_the_pages_it_holds(tmp_path: Path, knowledge: Path) -> None:
    """/Count 1 on 2,000 pages: the run reports the file over the page limit by the pages counted,
    reads none of its text, and indexes every other file."""
    from tests.hostile_files import false_count_pdf

    false_count_pdf(knowledge / "appendix.pdf", pages=2000, declared=1)
    settings = make_settings(tmp_path / "data", knowledge, rag={"max_pdf_pages": 1000})
    with knowledge_runtime(settings) as runtime:
        report = runtime.desk.index(None, "default")
        failed = {f["path"]: f["error"] for f in report.failed}
        assert failed == {
            "appendix.pdf": "appendix.pdf: 2,000 pages (its page tree claims 1), over the limit of rag.max_pdf_pages = 1,000\n"
            "  hint: split it into smaller PDFs, or raise rag.max_pdf_pages"
        }
        assert report.added == SAMPLE_FILES
        assert sorted(r.path for r in runtime.manifest.files("default").values() if r.state == "indexed") == sorted(
            p.name for p in EXAMPLES.iterdir()
        )
        assert_consistent(runtime)


class _StoreThatFailsMidWrite(ChromaStore):
    """Writes half of a batch to the real Chroma, then fails, as a full disk or a kill would."""

    def add(self, name, nodes):  # type: ignore[no-untyped-def]
        super().add(name, nodes[: len(nodes) // 2])
        raise StoreError("disk full (simulated)")


def test_a_run_that_dies_mid_write_is_completed_by_the_next(settings: Settings, knowledge: Path) -> None:
    from rag.ingest.indexer import Indexer

    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
        (knowledge / "faq.txt").write_text((knowledge / "faq.txt").read_text() + "\nA new question?\nA new answer.\n")
        (knowledge / "new-page.md").write_text("# New page\n\nSomething new about the staging cluster.\n")
        failing = _StoreThatFailsMidWrite(runtime.store.path, runtime.store.embed_model)
        with pytest.raises(StoreError):
            Indexer(settings, failing, runtime.manifest).run()
        (knowledge / "new-page.md").unlink()  # and the new file disappears before the next run

        report = runtime.indexer.run()
        assert report.updated == 1 and report.deleted == 1
        assert "new-page.md" not in chunk_ids_by_source(runtime)
        assert_consistent(runtime)


def test_collections_are_separate(runtime: Runtime, tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    (hr / "leave.md").write_text("# Parental leave\n\nParents get sixteen weeks of paid leave.\n")
    report = runtime.indexer.run([hr], collection="hr")
    assert report.added == 1
    assert runtime.store.collections() == ["hr"]
    assert chunk_ids_by_source(runtime, "hr").keys() == {"leave.md"}
    runtime.indexer.run()
    assert "leave.md" not in chunk_ids_by_source(runtime, "default")


def test_a_single_file_path_leaves_the_rest_alone(runtime: Runtime, knowledge: Path) -> None:
    report = runtime.indexer.run([knowledge / "faq.txt"])
    assert report.added == 1 and report.deleted == 0
    other = runtime.indexer.run([knowledge / "oncall-guide.md"])
    assert other.added == 1 and other.deleted == 0
    assert set(chunk_ids_by_source(runtime)) == {"faq.txt", "oncall-guide.md"}
    missing = runtime.indexer.run([knowledge / "nope.md"])
    assert missing.failed == [{"path": str(knowledge / "nope.md"), "error": "no such file or folder"}]


def test_a_moved_or_copied_knowledge_folder_holds_the_same_documents(tmp_path: Path, knowledge: Path) -> None:
    """rag.knowledge_dir pointed at the folder's new place (a moved volume, a data dir copied with
    its documents): nothing is embedded again, and nothing is indexed twice."""
    with knowledge_runtime(make_settings(tmp_path / "data", knowledge)) as runtime:
        chunks = runtime.indexer.run().total_chunks
    copied = Path(shutil.copytree(knowledge, tmp_path / "copied"))  # the old folder stays
    moved = Path(shutil.move(knowledge, tmp_path / "moved"))  # the old folder is gone
    for folder in (copied, moved):
        with knowledge_runtime(make_settings(tmp_path / "data", folder)) as runtime:
            report = runtime.indexer.run()
            assert (report.added, report.updated, report.deleted, report.unchanged, report.chunks) == (0, 0, 0, SAMPLE_FILES, 0)
            assert runtime.store.count("default") == report.total_chunks == chunks
            assert_consistent(runtime)
            found = [(p.path, p.text) for p in runtime.retriever.search("Who approves my expense claim first?", ["default"]).passages]
            assert found and len(found) == len(set(found))  # no passage comes back twice


def test_another_knowledge_folder_replaces_the_documents_of_the_old_one(tmp_path: Path, knowledge: Path) -> None:
    """The old folder's documents are gone from the new one: deleting all of them is refused as an
    unmounted share would be, until allowed; then only the new folder's documents answer."""
    with knowledge_runtime(make_settings(tmp_path / "data", knowledge)) as runtime:
        runtime.indexer.run()
    other = tmp_path / "other"
    other.mkdir()
    (other / "bikes.md").write_text("# Bicycles\n\nBicycles are stored in the basement bicycle room.\n")
    with knowledge_runtime(make_settings(tmp_path / "data", other)) as runtime:
        with pytest.raises(TeambotError, match=f"would delete {SAMPLE_FILES} of its {SAMPLE_FILES} documents because their files are gone from {other}"):
            runtime.indexer.run()
        assert len(runtime.manifest.files("default")) == SAMPLE_FILES  # nothing lost
        report = runtime.indexer.run(allow_mass_delete=True)
        assert (report.added, report.deleted) == (1, SAMPLE_FILES)
        assert [r.path for r in runtime.manifest.files("default").values()] == ["bikes.md"]
        assert_consistent(runtime)


def test_an_index_written_before_is_taken_over_without_embedding_again(runtime: Runtime, knowledge: Path) -> None:
    """Manifests written before named a collection's own folder by its absolute path."""
    chunks = runtime.indexer.run().total_chunks
    runtime.manifest.rename_root("default", "collection:default", str(knowledge.resolve()))  # as an earlier version wrote it
    report = runtime.indexer.run()
    assert (report.added, report.deleted, report.unchanged, report.chunks) == (0, 0, SAMPLE_FILES, 0)
    assert {r.root for r in runtime.manifest.files("default").values()} == {"collection:default"}
    assert runtime.store.count("default") == chunks


def test_rebuild_and_embedding_model_change(runtime: Runtime, settings: Settings) -> None:
    first = runtime.indexer.run()
    rebuilt = runtime.indexer.run(rebuild=True)
    assert rebuilt.added == SAMPLE_FILES and rebuilt.chunks == first.chunks
    assert_consistent(runtime)
    # Vectors of another model never join a collection (the indexer re-embeds it first).
    other_model = ChromaStore(runtime.store.path, "some/other-model")
    with pytest.raises(ConfigError, match="re-embeds the collection") as caught:
        other_model.add("default", [TextNode(text="a chunk embedded by another model", embedding=[0.0] * 384)])
    assert "some/other-model" in str(caught.value)
    assert runtime.store.count("default") == first.chunks


def test_missing_knowledge_folder_is_explained(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", tmp_path / "no-such-folder")
    with knowledge_runtime(settings) as runtime, pytest.raises(TeambotError, match="no-such-folder.*does not exist") as caught:
        runtime.indexer.run()
    assert "rag.knowledge_dir" in caught.value.hint


def test_a_rebuild_by_another_process_does_not_break_a_running_reader(settings: Settings) -> None:
    with knowledge_runtime(settings) as reader, knowledge_runtime(settings) as writer:
        writer.indexer.run()
        assert reader.retriever.search("When does the release train leave?", ["default"]).passages
        writer.indexer.run(rebuild=True)  # drops and re-creates the Chroma collection under the reader
        assert reader.retriever.search("When does the release train leave?", ["default"]).passages[0].path == "release-process.rst"


def test_a_locked_store_is_a_clear_error_and_the_next_run_completes(tmp_path: Path, knowledge: Path) -> None:
    settings = make_settings(tmp_path / "data", knowledge, rag={"store_timeout_s": 1})
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
        faq = knowledge / "faq.txt"
        faq.write_text(faq.read_text() + "\nIs there a gym?\nYes, on the ground floor.\n")
        with _locked(runtime.store.path / "chroma.sqlite3"):  # another process writing to the same Chroma store
            with pytest.raises(StoreError, match=r"is locked by process \d+ \(waited rag.store_timeout_s = 1 s") as caught:
                runtime.indexer.run()
            assert "another teambot" in caught.value.hint
            with pytest.raises(StoreError, match="locked"):
                runtime.retriever.search("Where is the gym?", ["default"])
        report = runtime.indexer.run()  # the lock is gone: this run finishes what the last one began
        assert report.updated == 1 and not report.failed
        assert runtime.retriever.search("Is there a gym?", ["default"]).passages[0].path == "faq.txt"
        assert_consistent(runtime)


@contextmanager
def _locked(database: Path) -> Iterator[None]:
    """Holds an exclusive lock on an SQLite database from another process until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(database)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


# --- an emptied folder ----------------------------------------------------------------------


def test_an_emptied_folder_keeps_its_chunks_until_mass_deletes_are_allowed(runtime: Runtime, knowledge: Path) -> None:
    """An unmounted share looks like an empty folder: the service's run and `teambot index` refuse
    to delete the collection; `teambot index --allow-mass-delete` deletes it."""
    from rag.operations.run_history import CollectionFailed
    from rag.operations.scheduler import IndexScheduler
    from tests.test_cli import run as teambot
    from tests.test_cli import teambot_env

    first = runtime.indexer.run()
    files = sorted(p.name for p in knowledge.iterdir())
    for path in knowledge.iterdir():
        path.unlink()

    done = IndexScheduler(runtime.settings, runtime.runs).run_all()  # what `teambot serve` runs
    [failed] = done.reports
    assert isinstance(failed, CollectionFailed) and failed.collection == "default"
    assert f"would delete {SAMPLE_FILES} of its {SAMPLE_FILES} documents because their files are gone from {knowledge}" in failed.error
    assert runtime.store.count("default") == first.total_chunks
    assert sorted(r.path for r in runtime.manifest.files("default").values()) == files
    assert_consistent(runtime)

    env = teambot_env(runtime.settings)
    refused = teambot(["index"], env)
    assert refused.returncode != 0 and "nothing was deleted" in refused.stderr and "--allow-mass-delete" in refused.stderr
    assert runtime.store.count("default") == first.total_chunks

    allowed = teambot(["index", "--allow-mass-delete", "--json"], env)
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["deleted"] == SAMPLE_FILES
    assert runtime.store.count("default") == 0 and not runtime.manifest.files("default")


def test_most_of_a_collection_is_not_deleted_unless_the_setting_allows_it(tmp_path: Path, knowledge: Path) -> None:
    settings = make_settings(tmp_path / "data", knowledge)
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
        gone = sorted(p.name for p in knowledge.iterdir())[:4]  # 4 of 7: more than half, more than a few
        for name in gone:
            (knowledge / name).unlink()
        with pytest.raises(TeambotError, match="would delete 4 of its 7 documents") as caught:
            runtime.indexer.run()
        assert "rag.max_delete_share = 0.5" in caught.value.message and "rag.allow_mass_delete" in caught.value.hint
        assert len(runtime.manifest.files("default")) == SAMPLE_FILES
        (knowledge / gone[0]).write_bytes((EXAMPLES / gone[0]).read_bytes())  # 3 gone: a few, allowed
        assert runtime.indexer.run().deleted == 3
        assert_consistent(runtime)

    for path in knowledge.iterdir():
        path.unlink()
    allowing = make_settings(tmp_path / "data", knowledge, rag={"allow_mass_delete": True})
    with knowledge_runtime(allowing) as runtime:
        assert runtime.indexer.run().deleted == 4  # all that was left, allowed by the setting
        assert_consistent(runtime)
