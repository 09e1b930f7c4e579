"""Uploaded files kept in the shared state (PostgreSQL, with ``state_url``), so that every replica
and whichever one runs the index can read them, and none is lost with the replica that took it.

Each upload or removal is a row (a removal has no data, and names the content it removed);
the newest row of a collection's file name says what that file is now, and older ones are its
previous versions (the newest ``rag.keep_versions`` are kept). Before every index run a
replica writes the versions stored since its last run into its own copy of the collection's
folder, and deletes the files removed since (``materialize``); the index run then reads the
folder as always. On one host (no ``state_url``) uploads are saved straight into the folder instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rag.operations.file_names import stored_name_problem
from rag.store.database import Stored

log = logging.getLogger(__name__)

MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS uploads (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,      -- the file's name in the collection's folder
    sha256     TEXT NOT NULL,      -- of the content; for a removal, of the content removed
    size       INTEGER NOT NULL,
    data       BLOB,               -- NULL: the file was removed
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_by_name ON uploads (collection, name, id);
""",
]


@dataclass(frozen=True)
class SharedFile:
    id: int
    collection: str
    name: str
    sha256: str
    size: int
    removed: bool
    created_at: float


@dataclass(frozen=True)
class Materialized:
    written: list[str]  # "collection/name" written into this replica's folders
    deleted: list[str]


class SharedUploads(Stored):
    COMPONENT, WHAT, MIGRATIONS = "shared_uploads", "the shared uploads", MIGRATIONS
    FILE = "uploads.sqlite"

    def put(self, collection: str, name: str, data: bytes, keep_versions: int) -> int:
        """Keeps a new version of the file; returns its row id."""
        return self._add(collection, name, hashlib.sha256(data).hexdigest(), len(data), data, keep_versions)

    def remove(self, collection: str, name: str, sha256: str, keep_versions: int) -> int:
        """Records that the file with this content was removed (replicas delete their copy of it)."""
        return self._add(collection, name, sha256, 0, None, keep_versions)

    def _add(self, collection: str, name: str, sha256: str, size: int, data: bytes | None, keep_versions: int) -> int:
        now = self.db.now
        with self._write() as tx:
            row = tx.execute(
                f"INSERT INTO uploads (collection, name, sha256, size, data, created_at) VALUES (?, ?, ?, ?, ?, {now}) RETURNING id",
                (collection, name, sha256, size, data),
            ).fetchone()
            upload_id = int(row["id"]) if row else 0
            # The newest row and keep_versions before it stay.
            tx.execute(
                """DELETE FROM uploads WHERE collection = ? AND name = ? AND id NOT IN
                   (SELECT id FROM uploads WHERE collection = ? AND name = ? ORDER BY id DESC LIMIT ?)""",
                (collection, name, collection, name, keep_versions + 1),
            )
        return upload_id

    def current(self, collection: str | None = None) -> list[SharedFile]:
        """The newest row of each file (removals included), without the data."""
        where, args = ("WHERE collection = ?", [collection]) if collection else ("", [])
        rows = self._read(
            f"""SELECT id, collection, name, sha256, size, data IS NULL AS removed, created_at FROM uploads
                WHERE id IN (SELECT MAX(id) FROM uploads {where} GROUP BY collection, name) ORDER BY collection, name""",
            args,
        )
        return [SharedFile(**{**row, "removed": bool(row["removed"])}) for row in rows]

    def newest_id(self) -> int:
        """The id of the latest upload or removal (0: none); it grows with every change."""
        rows = self._read("SELECT COALESCE(MAX(id), 0) AS newest FROM uploads")
        return int(rows[0]["newest"])

    def data(self, upload_id: int) -> bytes:
        rows = self._read("SELECT data FROM uploads WHERE id = ?", (upload_id,))
        return bytes(rows[0]["data"]) if rows and rows[0]["data"] is not None else b""

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) AS n FROM uploads")[0]["n"])

    def materialize(self, folders: dict[str, Path], default_folder: Path, since: int = 0) -> Materialized:
        """Brings this replica's copies up to date with the changes after ``since`` (an upload id):
        each newer version written where the local content differs, each newer removal carried out
        where the local file holds the removed content; a file missing here is written whatever its
        age. A local edit of a file stays until that file is uploaded again.
        ``folders``: the collections' folders on this replica; others go under ``default_folder``."""
        written, deleted = [], []
        for item in self.current():
            if problem := stored_name_problem(item.collection, item.name):
                log.warning(
                    "shared uploads: row %d (%r in collection %r) was not written: %s; "
                    "whoever can write the shared database put it there: check it, and delete the row",
                    item.id, item.name, item.collection, problem,
                )
                continue
            folder = folders.get(item.collection, default_folder / item.collection)
            path = folder / item.name
            if not _inside(path, folder):
                log.warning("shared uploads: %s/%s was not written: a link there leads outside the collection's folder", item.collection, item.name)
                continue
            if item.removed:
                if item.id > since and _sha256(path) == item.sha256:
                    path.unlink(missing_ok=True)
                    deleted.append(f"{item.collection}/{item.name}")
                continue
            if path.exists() and (item.id <= since or _sha256(path) == item.sha256):
                continue
            self._write_file(item, path)
            written.append(f"{item.collection}/{item.name}")
        if written or deleted:
            log.info("shared uploads: %d file(s) written, %d deleted in this replica's folders", len(written), len(deleted))
        return Materialized(written, deleted)

    def _write_file(self, item: SharedFile, path: Path) -> None:
        """Writes the stored version at ``path`` (its subfolders made), whole or not at all."""
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.parent / f".shared-{os.getpid()}-{item.id}{path.suffix}"  # hidden: index runs skip it
        try:
            staging.write_bytes(self.data(item.id))
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)


class UploadSync:
    """This replica's copies of the shared uploads: brought up to date before every index run.
    How far they are is kept in the data dir (``marker``), so a restart does not write every file again."""

    def __init__(self, uploads: SharedUploads, folders: Callable[[], dict[str, Path]], default_folder: Path, marker: Path) -> None:
        self.uploads = uploads
        self._folders = folders
        self._default_folder = default_folder
        self._marker = marker
        try:
            self._synced = int(marker.read_text())  # the newest upload id this replica has written into its folders
        except (OSError, ValueError):
            self._synced = 0

    def sync(self) -> Materialized:
        newest = self.uploads.newest_id()
        done = self.uploads.materialize(self._folders(), self._default_folder, since=self._synced)
        self._synced = newest
        try:
            self._marker.parent.mkdir(parents=True, exist_ok=True)
            self._marker.write_text(str(newest))
        except OSError as exc:  # the next start compares every file again: slower, not wrong
            log.warning("could not record the shared uploads written here in %s: %s", self._marker, exc)
        return done

    def behind(self) -> bool:
        """Whether another replica added or removed a file since this one last synced (its next run indexes it)."""
        return self.uploads.newest_id() > self._synced


def _inside(path: Path, folder: Path) -> bool:
    """Whether writing (or deleting) ``path`` stays inside ``folder``: no link on the way, nor the
    file itself if it is one, leads out of it."""
    return path.resolve().is_relative_to(folder.resolve())


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
