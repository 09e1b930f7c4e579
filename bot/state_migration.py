"""`teambot state migrate`: moves one host's state (the SQLite files in its data dir) into
PostgreSQL, so that replicas on other hosts can share it.

Every table of every part is copied in one PostgreSQL transaction, then counted on both
sides; a difference rolls the whole copy back. The manifest's folders become the collections'
names (``collection:<name>``, as with state_url), keeping every document's id, so the Chroma
store's chunks stay valid and nothing is embedded again. The files of every collection's
folder are stored in PostgreSQL too (rag.operations.shared_uploads): a replica then needs
no copy of them, its index runs write them into its own folders.

The state is bound to the Chroma store its manifest describes (replicas using another store are
refused at start): the data dir's embedded store, or the Chroma server given, e.g. one that now
serves the data dir's ``chroma`` folder (`chroma run --path <data_dir>/chroma`).

The target must hold no teambot state yet, and no `teambot serve` may run on the data dir
(it would go on writing to the SQLite files).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.answer_log import AnswerLog
from bot.platform_state import PlatformState
from config.errors import ConfigError, StoreError
from config.settings import Settings
from rag.ingest.documents import SUPPORTED_SUFFIXES
from rag.ingest.indexer import COLLECTION_ROOT, FolderWalk, folder_files
from rag.operations.file_names import stored_name_problem
from rag.operations.lease import IndexLease, read_lease
from rag.operations.run_history import RunHistory
from rag.operations.shared_uploads import SharedUploads
from rag.store.chroma import store_identity
from rag.store.database import PostgresDatabase, SqliteDatabase, Stored, Transaction, is_postgres_url
from rag.store.manifest import Manifest

# The parts and their tables, in the order they are copied (votes refer to answers, requests to runs).
# The lease is not copied: no replica holds it while nobody serves.
PARTS: list[tuple[type[Stored], tuple[str, ...]]] = [
    (Manifest, ("files", "generations", "changes")),
    (RunHistory, ("runs", "requests")),
    (AnswerLog, ("answers", "votes")),
    (PlatformState, ("seen_once", "console_sessions")),
]
IDENTITY_COLUMNS = {"runs": "id", "requests": "id"}  # their sequences continue after the copied ids
BATCH_ROWS = 1000


@dataclass(frozen=True)
class TableCount:
    table: str
    source: int
    copied: int


@dataclass(frozen=True)
class Migration:
    target: str  # where, without a password
    tables: list[TableCount]
    files: int  # knowledge files stored in PostgreSQL
    files_bytes: int
    skipped: list[str]  # files not stored, and why
    store: str  # the Chroma store the state describes: every replica must use it
    seconds: float


def migrate_state(settings: Settings, url: str, progress: Callable[[str], None] = lambda _: None, chroma_url: str | None = None) -> Migration:
    """Copies the data dir's SQLite state and the collections' files into the PostgreSQL at ``url``.

    The state is bound to the Chroma store it describes: ``chroma_url`` (a server now serving this
    data dir's store), else rag.chroma_url, else the embedded store in the data dir."""
    if not is_postgres_url(url):
        raise ConfigError(f"{url!r} is not a PostgreSQL URL", "give postgresql://user@host:5432/database (the password in PGPASSWORD)")
    started = time.monotonic()
    data_dir = settings.data_dir
    _refuse_a_running_service(data_dir)
    target = PostgresDatabase(url, "the shared state")
    try:
        for part, _ in [*PARTS, (SharedUploads, ()), (IndexLease, ())]:
            target.ensure(part.COMPONENT, part.MIGRATIONS)
        _refuse_a_used_target(target)
        counts: list[TableCount] = []
        with target.write() as tx:
            for part, tables in PARTS:
                source_path = data_dir / part.FILE
                if not source_path.is_file():
                    counts += [TableCount(t, 0, 0) for t in tables]
                    continue
                source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
                try:
                    for table in tables:
                        copied = _copy_table(source, tx, table, settings, progress)
                        counts.append(TableCount(table, _count(source, table), copied))
                finally:
                    source.close()
            for table, column in IDENTITY_COLUMNS.items():
                tx.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), COALESCE(MAX({column}), 0) + 1, false) FROM {table}")
            files, size, skipped = _store_files(tx, settings, target.now, progress)
            store = store_identity(data_dir / "chroma", chroma_url or settings.rag.chroma_url)
            tx.execute("INSERT INTO store_binding VALUES (1, ?)", (store,))
            for count in counts:
                in_target = tx.execute(f"SELECT COUNT(*) AS n FROM {count.table}").fetchone()
                if in_target is None or in_target["n"] != count.source or count.copied != count.source:
                    raise StoreError(
                        f"table {count.table}: {count.source} rows in {data_dir}, {in_target['n'] if in_target else '?'} in {target.where}",
                        "nothing was copied (the copy was rolled back); run the migration again",
                    )
        return Migration(target.where, counts, files, size, skipped, store, round(time.monotonic() - started, 2))
    finally:
        target.close()


def _refuse_a_running_service(data_dir: Path) -> None:
    runs = data_dir / RunHistory.FILE
    if not runs.is_file():
        return
    db = SqliteDatabase(runs, "the index lease")
    try:
        lease = read_lease(db)
    finally:
        db.close()
    if lease is not None and lease.alive:
        raise ConfigError(
            f"a teambot serve (pid {lease.info.get('pid', '?')} on {lease.info.get('host', '?')}) runs on {data_dir}",
            "stop it first: it would go on writing to the SQLite files",
        )


def _refuse_a_used_target(target: PostgresDatabase) -> None:
    for part, tables in [*PARTS, (SharedUploads, ("uploads",)), (Manifest, ("store_binding",))]:
        for table in tables:
            if target.read(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]:
                raise ConfigError(
                    f"{target.where} already holds teambot state (table {table} has rows)",
                    "migrate into an empty database (createdb teambot_new), or point state_url at this one and skip the migration",
                )


def _count(source: sqlite3.Connection, table: str) -> int:
    try:
        return int(source.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # a file from before this table existed
        return 0


def _copy_table(source: sqlite3.Connection, tx: Transaction, table: str, settings: Settings, progress: Callable[[str], None]) -> int:
    try:
        cursor = source.execute(f"SELECT * FROM {table}")
    except sqlite3.OperationalError:
        return 0
    columns = [d[0] for d in cursor.description]
    insert = f"INSERT INTO {table} ({', '.join(_quoted(c) for c in columns)}) VALUES ({', '.join('?' * len(columns))})"
    # The manifest names a collection's folder by the collection's name, as replicas with shared state do.
    roots = {str(folder.resolve()): COLLECTION_ROOT + name for name, folder in settings.collection_dirs().items()} if table == "files" else {}
    copied = 0
    while rows := cursor.fetchmany(BATCH_ROWS):
        if roots:
            at = columns.index("root")
            rows = [(*row[:at], roots.get(row[at], row[at]), *row[at + 1 :]) for row in rows]
        tx.executemany(insert, rows)
        copied += len(rows)
    progress(f"{table}: {copied} rows")
    return copied


def _quoted(column: str) -> str:
    return f'"{column}"' if column == "user" else column


def _store_files(tx: Transaction, settings: Settings, now: str, progress: Callable[[str], None]) -> tuple[int, int, list[str]]:
    """Every readable file of every collection's folder, as the newest version in the shared uploads; counted after."""
    stored: set[tuple[str, str, str]] = set()
    size, skipped = 0, []
    max_bytes = int(settings.rag.max_file_mb * 1024 * 1024)
    for collection, folder in settings.collection_dirs().items():
        walk = folder_files(folder) if folder.is_dir() else FolderWalk([], {})
        skipped += [f"{collection}/{path.relative_to(folder.resolve()).as_posix()}: {why}" for path, why in walk.skipped.items()]
        for path in walk.files:
            name = path.relative_to(folder.resolve()).as_posix()
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            if problem := stored_name_problem(collection, name):
                skipped.append(f"{collection}/{name}: replicas would not write it ({problem}); rename it, or keep it in that folder on the replicas")
                continue
            if path.stat().st_size > max_bytes:
                skipped.append(f"{collection}/{name}: over rag.max_file_mb ({settings.rag.max_file_mb:g} MB); keep it in that folder on the replicas")
                continue
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            tx.execute(
                f"INSERT INTO uploads (collection, name, sha256, size, data, created_at) VALUES (?, ?, ?, ?, ?, {now})",
                (collection, name, sha, len(data), data),
            )
            stored.add((collection, name, sha))
            size += len(data)
        progress(f"collection {collection}: {sum(c == collection for c, _, _ in stored)} files stored")
    present = {(r["collection"], r["name"], r["sha256"]) for r in tx.execute("SELECT collection, name, sha256 FROM uploads").fetchall()}
    if present != stored:
        raise StoreError(
            f"{len(stored)} knowledge files were read but {len(present)} are in the shared uploads",
            "nothing was copied (the copy was rolled back); run the migration again",
        )
    return len(stored), size, skipped
