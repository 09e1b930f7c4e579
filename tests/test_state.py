"""The state's contract, run against both backends: SQLite files in a data dir, and a real
PostgreSQL server (tests/postgres.py). Every part teambot keeps there: the index manifest, the
run queue and history, the index lease, the answer log, platform event ids, console sessions
and shared uploads; and the interface itself (migrations, the cross-process lock, errors)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.answer_log import AnswerLog
from bot.core import AnswerDone
from bot.platform_state import PlatformState, session_key
from config.errors import StoreError
from rag.operations.lease import IndexLease, read_lease
from rag.operations.run_history import RunHistory
from rag.operations.shared_uploads import SharedUploads, UploadSync
from rag.store.database import Database, PostgresDatabase, Stored
from rag.store.manifest import FileRecord, Manifest
from tests.proc import wait_for

Open = Callable[[type[Stored]], Database]
DONE = AnswerDone("In the basement [1].", [], [1], True)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Open:
    """A new connection to the part's database on the backend under test (the same database each call)."""
    url = request.getfixturevalue("state_url") if request.param == "postgresql" else None
    return lambda part: part.database(url, tmp_path / "data")


def record(doc: str, state: str = "indexed", chunks: int = 2, collection: str = "default") -> FileRecord:
    return FileRecord(collection, doc, "collection:default", f"{doc}.md", "ab" * 32, 10, doc.title(), chunks, state, "", time.time())  # type: ignore[arg-type]


def test_the_manifest_keeps_files_and_counts_generations(open_db: Open) -> None:
    manifest = Manifest(open_db(Manifest))
    try:
        manifest.mark_pending([record("a")])
        assert manifest.get("default", "a").state == "pending"  # type: ignore[union-attr]
        manifest.save([record("a"), record("b", chunks=5)])
        manifest.save([record("b", chunks=7)])  # a file indexed again replaces its row
        assert {d: r.chunks for d, r in manifest.files("default").items()} == {"a": 2, "b": 7}
        assert manifest.files("default", root="elsewhere") == {}
        assert manifest.collections() == ["default"]
        assert manifest.generation("default") == 2
        assert manifest.changes_since("default", 1).doc_ids == {"b"}
        manifest.remove("default", ["a"])
        assert manifest.changes_since("default", 0).doc_ids == {"a", "b"}
        assert [r.doc_id for r in manifest.indexed()] == ["b"]
        manifest.drop_collection("default")
        assert manifest.changes_since("default", 3).doc_ids is None  # "everything may have changed"
        assert manifest.files("default") == {}
    finally:
        manifest.close()
    again = Manifest(open_db(Manifest))  # another process: the same rows, the schema not applied twice
    try:
        assert again.generation("default") == 4
    finally:
        again.close()


def test_the_run_queue_and_history(open_db: Open) -> None:
    history = RunHistory(open_db(RunHistory))
    try:
        first, second = history.request("console"), history.request("slack")
        assert second.id > first.id and [r.id for r in history.waiting()] == [first.id, second.id]
        run = history.start_run("host:1:a", "schedule")
        assert run.trigger == "schedule+console+slack" and run.state == "running"
        assert history.waiting() == [] and history.get_request(first.id).run_id == run.id  # type: ignore[union-attr]
        history.progress(run.id, 10, 4, "default")
        assert (history.running().files_done, history.running().current) == (4, "default")  # type: ignore[union-attr]
        late = history.request("cli")  # during the run: it waits for the next one
        history.finish(run.id, "done", [])
        assert history.get(run.id).state == "done" and [r.id for r in history.waiting()] == [late.id]  # type: ignore[union-attr]
        dead = history.start_run("host:2:b", "start")  # its process dies
        assert history.interrupt_dead("host:3:c") == [dead.id]
        assert history.get(dead.id).state == "interrupted"  # type: ignore[union-attr]
        assert [r.id for r in history.waiting()] == [late.id]  # its requests wait again
        assert [r.id for r in history.recent(5)] == [dead.id, run.id]
    finally:
        history.close()


def test_the_lease_has_one_holder_and_passes_on_when_it_is_not_renewed(open_db: Open) -> None:
    a = IndexLease(open_db(IndexLease), "host-a:1:x", ttl_s=1.0)
    b = IndexLease(open_db(IndexLease), "host-b:2:y", ttl_s=1.0)
    try:
        assert a.acquire({"pid": 1}) and a.time_left() > 0
        assert not b.acquire() and b.time_left() == 0
        assert a.acquire({"pid": 1})  # a renewal
        state = read_lease(b.db)
        assert state is not None and (state.holder, state.info, state.alive) == ("host-a:1:x", {"pid": 1}, True)
        stopped = time.monotonic()  # a stops renewing (it hangs or died)
        wait_for(lambda: b.acquire(), "b to take the lease over", timeout=60, every=0.1)
        assert time.monotonic() - stopped >= 0.9  # not before a's lease ran out
        assert not a.acquire()
        b.release()
        assert read_lease(a.db) is None and a.acquire()
    finally:
        a.close()
        b.close()


def test_answers_votes_and_retention(open_db: Open) -> None:
    log = AnswerLog(open_db(AnswerLog))
    try:
        first = log.record("slack", "C1", "1.0", "U1", "Where is the bike room?", DONE)
        second = log.record("discord", "C2", "", "U2", "出差住宿每晚可以报销多少钱？", DONE)
        assert log.vote(first, "U2", "up") and log.vote(first, "U3", "down") and log.vote(first, "U2", "down")  # U2's latest counts
        assert not log.vote("no-such-answer", "U2", "up")
        assert [(a.id, a.up, a.down) for a in log.recent()] == [(second, 0, 0), (first, 0, 2)]
        assert [a.id for a in log.recent(voted_down=True)] == [first]
        assert log.recent()[0].question == "出差住宿每晚可以报销多少钱？"
        assert log.answered_in("slack", "C1", "1.0") and not log.answered_in("slack", "C1", "2.0")
        with log.db.write() as tx:
            tx.execute("UPDATE answers SET created_at = created_at - ? WHERE id = ?", (31 * 86_400, first))
    finally:
        log.close()
    pruned = AnswerLog(open_db(AnswerLog), retention_days=30)
    try:
        assert [a.id for a in pruned.recent()] == [second]
        assert pruned.db.read("SELECT COUNT(*) AS n FROM votes")[0]["n"] == 0  # its votes went with it
    finally:
        pruned.close()


def test_event_ids_are_claimed_once_until_they_expire(open_db: Open) -> None:
    one, other = PlatformState(open_db(PlatformState)), PlatformState(open_db(PlatformState))  # two replicas
    try:
        assert one.seen.claim("slack-event:Ev1", 60)
        assert not other.seen.claim("slack-event:Ev1", 60)
        assert other.seen.claim("slack-event:Ev2", 60)
        one.seen.forget("slack-event:Ev1")  # not handled after all: the retry is
        assert other.seen.claim("slack-event:Ev1", 60)
        assert one.seen.claim("slack-request:abc", 0.3)
        wait_for(lambda: other.seen.claim("slack-request:abc", 0.3), "the key to expire", timeout=30, every=0.05)
    finally:
        one.close()
        other.close()


def test_console_sessions_are_known_to_every_replica_and_stored_hashed(open_db: Open) -> None:
    one, other = PlatformState(open_db(PlatformState)), PlatformState(open_db(PlatformState))
    key = session_key(b"an-admin-token-of-length")
    try:
        session = one.sessions.start(key, 3600)
        assert other.sessions.valid(key, session) and not other.sessions.valid(key, "forged") and not other.sessions.valid(key, "")
        stored = [row["id_sha256"] for row in one.db.read("SELECT id_sha256 FROM console_sessions")]
        assert stored == [hmac.new(key, session.encode(), hashlib.sha256).hexdigest()]  # not the id itself
        other.sessions.end(key, session)
        assert not one.sessions.valid(key, session)
        short = one.sessions.start(key, 0.3)
        wait_for(lambda: not other.sessions.valid(key, short), "the session to expire", timeout=30, every=0.05)
    finally:
        one.close()
        other.close()


def test_a_console_session_is_valid_only_with_the_admin_token_it_was_started_with(open_db: Open) -> None:
    """Issue 22.7: a replica started with a new admin token refuses every session of the old one."""
    old_token, new_token = b"the-old-admin-token-1234", b"the-new-admin-token-5678"
    one, other = PlatformState(open_db(PlatformState)), PlatformState(open_db(PlatformState))
    try:
        session = one.sessions.start(session_key(old_token), 3600)
        assert other.sessions.valid(session_key(old_token), session)
        assert not other.sessions.valid(session_key(new_token), session)
        assert not one.sessions.valid(session_key(new_token), session)
        stored = " ".join(row["id_sha256"] for row in one.db.read("SELECT id_sha256 FROM console_sessions"))
        for secret in (old_token, hashlib.sha256(old_token).hexdigest().encode(), session_key(old_token).hex().encode(), session.encode()):
            assert secret.decode() not in stored
    finally:
        one.close()
        other.close()


def test_shared_uploads_keep_versions_and_reach_every_replicas_folder(open_db: Open, tmp_path: Path) -> None:
    uploads = SharedUploads(open_db(SharedUploads))
    here, there = tmp_path / "here", tmp_path / "there"
    try:
        for n in range(4):
            uploads.put("team", "guide.md", f"# Guide\n\nversion {n}\n".encode(), keep_versions=2)
        uploads.put("team", "其他.md", "# 其他\n".encode(), keep_versions=2)
        assert uploads.count() == 4  # guide.md: the newest and 2 before it
        current = {f.name: f for f in uploads.current("team")}
        assert set(current) == {"guide.md", "其他.md"} and uploads.data(current["guide.md"].id) == b"# Guide\n\nversion 3\n"
        done = uploads.materialize({"team": here / "team"}, there)
        assert sorted(done.written) == ["team/guide.md", "team/其他.md"]
        assert (here / "team" / "guide.md").read_text() == "# Guide\n\nversion 3\n"
        assert uploads.materialize({"team": here / "team"}, there).written == []  # up to date: nothing written
        assert uploads.materialize({}, there).written and (there / "team" / "guide.md").is_file()  # a collection made by uploads
        (there / "team" / "其他.md").write_text("edited by hand")
        newest = uploads.newest_id()
        uploads.remove("team", "guide.md", hashlib.sha256(b"# Guide\n\nversion 3\n").hexdigest(), keep_versions=2)
        uploads.remove("team", "其他.md", current["其他.md"].sha256, keep_versions=2)
        assert uploads.newest_id() > newest
        done = uploads.materialize({}, there)
        assert done.deleted == ["team/guide.md"]  # the hand-edited file holds other content: kept
        assert (there / "team" / "其他.md").read_text() == "edited by hand"
    finally:
        uploads.close()


def test_a_replica_keeps_its_local_edit_until_the_file_is_uploaded_again(open_db: Open, tmp_path: Path) -> None:
    uploads = SharedUploads(open_db(SharedUploads))
    folder, marker = tmp_path / "kb", tmp_path / "data" / "synced"

    def replica() -> UploadSync:  # as a `teambot serve` (re)starting on this data dir
        return UploadSync(uploads, lambda: {"default": folder}, tmp_path / "other", marker)

    try:
        uploads.put("default", "a.md", b"# A\n\nversion 1\n", keep_versions=5)
        sync = replica()
        assert sync.behind() and sync.sync().written == ["default/a.md"] and not sync.behind()
        (folder / "a.md").write_bytes(b"# A\n\nedited on this host\n")
        assert sync.sync().written == []  # a local edit stays
        restarted = replica()
        assert not restarted.behind() and restarted.sync().written == []
        (folder / "a.md").unlink()
        assert restarted.sync().written == ["default/a.md"]  # a missing file is written whatever its age
        uploads.put("default", "a.md", b"# A\n\nversion 2\n", keep_versions=5)
        assert restarted.behind() and restarted.sync().written == ["default/a.md"]
        assert (folder / "a.md").read_bytes() == b"# A\n\nversion 2\n"  # a new upload wins
    finally:
        uploads.close()


def test_shared_uploads_are_not_written_through_a_link_that_leaves_the_folder(open_db: Open, tmp_path: Path) -> None:
    uploads = SharedUploads(open_db(SharedUploads))
    folder, outside = tmp_path / "kb", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    (folder / "hosts.md").symlink_to(outside / "hosts.md")
    try:
        uploads.put("default", "sub/a.md", b"# A\n", keep_versions=2)
        uploads.put("default", "b.md", b"# B\n", keep_versions=2)
        uploads.put("default", "hosts.md", b"# written through a link\n", keep_versions=2)
        done = uploads.materialize({"default": folder}, tmp_path / "other")
        assert done.written == ["default/b.md"]
        assert list(outside.iterdir()) == []
    finally:
        uploads.close()


def test_migrations_are_versioned_and_a_newer_schema_is_refused(open_db: Open) -> None:
    db = open_db(Manifest)
    try:
        Manifest(db)
        assert db.read("SELECT version FROM schema_versions WHERE component = 'manifest'")[0]["version"] == len(Manifest.MIGRATIONS)
        with db.write() as tx:
            tx.execute("UPDATE schema_versions SET version = 99 WHERE component = 'manifest'")
        with pytest.raises(StoreError, match="newer than this teambot's"):
            Manifest(open_db(Manifest))
    finally:
        db.close()


def test_the_index_lock_has_one_holder_across_connections(open_db: Open) -> None:
    first, second = open_db(Manifest), open_db(Manifest)
    held, order = threading.Event(), []
    release = threading.Event()

    def hold() -> None:
        with first.exclusive("index"):
            order.append("first")
            held.set()
            release.wait(60)
            order.append("first done")

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(60)
        def wait() -> None:
            with second.exclusive("index"):
                order.append("second")

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(0.5)
        assert order == ["first"]  # the second waits while the first holds it
        release.set()
        waiter.join(60)
        assert order == ["first", "first done", "second"]
    finally:
        release.set()
        holder.join(60)
        first.close()
        second.close()


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        PostgresDatabase("postgresql://teambot:s3cret-pw@127.0.0.1:9/teambot", "the index manifest")
    assert "PostgreSQL at 127.0.0.1:9/teambot" in str(caught.value) and "s3cret-pw" not in str(caught.value)
    assert "state_url" in caught.value.hint
