"""Uploads kept in PostgreSQL reach the index even when the replica that took them dies before
indexing: the lease holder sees a stored file it has not written yet, writes it into its own
folder and indexes it; a removal stored by another replica is carried out the same way.
(The real scheduler, indexer, Chroma and PostgreSQL.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bot.runtime import knowledge_runtime
from rag.operations.run_history import Run
from rag.operations.scheduler import IndexScheduler
from rag.operations.shared_uploads import SharedUploads
from tests.conftest import make_settings
from tests.proc import async_wait_for

LATE_DOC = b"# Parking\n\nVisitors park on level -2 of the garage; the gate code is 1988.\n"


def last_run(runs: list[Run], trigger: str) -> Run | None:
    return runs[0] if runs and runs[0].state == "done" and trigger in runs[0].trigger else None


async def test_a_file_stored_by_a_replica_that_died_is_indexed_and_removed_by_the_leader(
    state_url: str, knowledge: Path, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path / "data", knowledge, state_url=state_url)
    other_replica = SharedUploads(SharedUploads.database(state_url, tmp_path))
    with knowledge_runtime(settings) as runtime:
        scheduler = IndexScheduler(settings, runtime.runs)
        await scheduler.start()
        try:
            await async_wait_for(lambda: last_run(runtime.history.recent(1), "start"), "the run at start", timeout=300)
            other_replica.put("default", "parking.md", LATE_DOC, keep_versions=5)  # ... and the replica died
            run = await async_wait_for(lambda: last_run(runtime.history.recent(1), "shared-upload"), "the leader's run", timeout=300)
            report = run.report_for("default")
            assert report is not None and report.added == 1  # type: ignore[union-attr]
            assert (knowledge / "parking.md").read_bytes() == LATE_DOC
            record = next(r for r in runtime.manifest.files("default").values() if r.path == "parking.md")
            assert record.state == "indexed" and record.root == "collection:default"

            other_replica.remove("default", "parking.md", hashlib.sha256(LATE_DOC).hexdigest(), keep_versions=5)
            run = await async_wait_for(
                lambda: (r := last_run(runtime.history.recent(1), "shared-upload")) and r.report_for("default").deleted == 1 and r,  # type: ignore[union-attr]
                "the leader's run after the removal",
                timeout=300,
            )
            assert not (knowledge / "parking.md").exists()
            assert all(r.path != "parking.md" for r in runtime.manifest.files("default").values())
        finally:
            await scheduler.stop()
            other_replica.close()


def test_a_migrated_file_in_a_subfolder_reaches_a_replica_with_an_empty_folder(state_url: str, tmp_path: Path) -> None:
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    settings = make_settings(tmp_path / "data", knowledge, state_url=state_url)
    migrated = SharedUploads(SharedUploads.database(state_url, tmp_path))
    migrated.put("default", "sub/deeper/nested.md", LATE_DOC, keep_versions=5)  # as `teambot state migrate` stores it
    migrated.close()
    with knowledge_runtime(settings) as runtime:
        report = runtime.desk.index(None, "default")
        assert report.added == 1 and not report.failed
        assert (knowledge / "sub" / "deeper" / "nested.md").read_bytes() == LATE_DOC
        assert [r.path for r in runtime.manifest.files("default").values()] == ["sub/deeper/nested.md"]
        assert [p.name for p in (knowledge / "sub" / "deeper").iterdir()] == ["nested.md"]  # no staging file left


HOSTILE_ROWS = [  # (collection, name) that someone who can write the shared database stored
    ("default", "../../escaped-from-db.md"),
    ("default", "sub/../../../escaped-through-sub.md"),
    ("../../escaped-collection", "notes.md"),
    ("/tmp", "escaped-absolute-collection.md"),
    ("default", "."),
    ("default", ".hidden-escaped.md"),
    ("default", "evil\nname-escaped.md"),
    ("default", "run-escaped.sh"),
]


def test_stored_names_that_an_upload_could_not_have_are_not_written(state_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    knowledge = tmp_path / "deep" / "er" / "knowledge"  # every escape above still lands inside tmp_path, where it is looked for
    knowledge.mkdir(parents=True)
    settings = make_settings(tmp_path / "deep" / "er" / "data", knowledge, state_url=state_url)
    database = SharedUploads(SharedUploads.database(state_url, tmp_path))
    for collection, name in HOSTILE_ROWS:
        database.put(collection, name, b"# Owned\n\nWritten by whoever could write the database.\n", keep_versions=5)
    database.put("default", "parking.md", LATE_DOC, keep_versions=5)
    database.close()
    with knowledge_runtime(settings) as runtime:
        report = runtime.desk.index(None, "default")
        assert report.added == 1 and not report.failed  # the run goes on: the good file is indexed
        assert [r.path for r in runtime.manifest.files("default").values()] == ["parking.md"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*escaped*")) == []
    refused = [r.getMessage() for r in caplog.records if "was not written" in r.getMessage()]
    assert len(refused) == len(HOSTILE_ROWS)
    assert any("'../../escaped-from-db.md'" in m and "'..' is not a safe file or folder name" in m and "delete the row" in m for m in refused)
    assert any("collection '../../escaped-collection'" in m and "the collection name is not" in m for m in refused)
