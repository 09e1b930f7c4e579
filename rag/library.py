"""The knowledge base as admins manage it from chat or the console: add a file, list, remove.

An upload is checked (name, type, size) before it is downloaded, parsed before it is
saved, then saved into its collection's folder and indexed at once. A file that fails any
step leaves the folder and the index as they were.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.errors import TeambotError
from config.settings import Settings, check_collection_name
from rag.documents import SUPPORTED_SUFFIXES, DocumentError, read_document
from rag.indexer import Indexer
from rag.manifest import FileRecord, Manifest

MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r"[^\w.\- ()\u3400-\u9fff]+")


class UploadError(TeambotError):
    """An uploaded file was refused; nothing was changed."""


@dataclass(frozen=True)
class Added:
    collection: str
    name: str
    chunks: int
    replaced: bool  # a file of that name was there before


@dataclass(frozen=True)
class Document:
    collection: str
    path: str
    title: str
    chunks: int
    size: int
    state: str
    error: str
    indexed_at: float


class KnowledgeLibrary:
    def __init__(self, settings: Settings, indexer: Indexer, manifest: Manifest) -> None:
        self._settings = settings
        self._indexer = indexer
        self._manifest = manifest
        self.max_bytes = int(settings.rag.max_file_mb * 1024 * 1024)
        self.on_upload: Callable[[bool], None] | None = None  # told of every upload: added (True) or refused (False)

    def _count(self, ok: bool) -> None:
        if self.on_upload is not None:
            self.on_upload(ok)

    def check(self, filename: str, size: int | None) -> str:
        """The name the file will be saved under; UploadError if its type or size is refused (before any download)."""
        try:
            return self._check(filename, size)
        except UploadError:
            self._count(False)
            raise

    def _check(self, filename: str, size: int | None) -> str:
        name = safe_name(filename)
        suffix = Path(name).suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise UploadError(
                f"{filename}: teambot cannot read '{suffix or 'files without an extension'}'",
                f"upload one of: {', '.join(sorted(SUPPORTED_SUFFIXES))}",
            )
        if size is not None and size > self.max_bytes:
            raise UploadError(
                f"{filename} is {size / 1024 / 1024:.1f} MB, over the limit of {self._settings.rag.max_file_mb:g} MB",
                "split it, or raise rag.max_file_mb",
            )
        return name

    def add(self, collection: str, filename: str, data: bytes) -> Added:
        """Saves and indexes one file (replacing one of the same name); UploadError if it is refused."""
        check_collection_name(collection)
        name = self.check(filename, len(data))
        try:
            added = self._add(collection, name, data)
        except UploadError:
            self._count(False)
            raise
        self._count(True)
        return added

    def _add(self, collection: str, name: str, data: bytes) -> Added:
        folder = self._settings.collection_dir(collection)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / name
        # A hidden name: index runs skip it while it is being checked.
        staging = folder / f".upload-{os.getpid()}-{time.monotonic_ns()}{final.suffix}"
        staging.write_bytes(data)
        try:
            read_document(staging)
        except DocumentError as exc:
            staging.unlink(missing_ok=True)
            raise UploadError(str(exc.message).replace(staging.name, name), exc.hint) from None
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        replaced = final.exists()
        os.replace(staging, final)
        report = self._indexer.run([final], collection)
        if report.failed:
            raise UploadError(f"{name} was saved but not indexed: {report.failed[0]['error']}")
        record = self._record(collection, folder, name)
        return Added(collection, name, record.chunks if record else 0, replaced)

    def documents(self, collection: str) -> list[Document]:
        check_collection_name(collection)
        return sorted(
            (
                Document(collection, r.path, r.title, r.chunks, r.size, r.state, r.error, r.indexed_at)
                for r in self._manifest.files(collection).values()
            ),
            key=lambda d: d.path,
        )

    def remove(self, collection: str, name: str) -> Document:
        """Deletes a file from the collection's folder and its chunks from the index."""
        check_collection_name(collection)
        folder = self._settings.collection_dir(collection)
        record = self._record(collection, folder, name)
        path = folder / name
        if record is None or not path.resolve().is_relative_to(folder.resolve()):
            known = ", ".join(d.path for d in self.documents(collection)[:20]) or "none"
            raise UploadError(f"collection {collection!r} has no document {name!r}", f"its documents: {known}")
        path.unlink(missing_ok=True)
        self._indexer.run([folder], collection)  # the folder no longer has it: its chunks go
        return Document(collection, record.path, record.title, record.chunks, record.size, record.state, record.error, record.indexed_at)

    def _record(self, collection: str, folder: Path, name: str) -> FileRecord | None:
        root = str(folder.resolve())
        return next((r for r in self._manifest.files(collection, root).values() if r.path == name), None)


def safe_name(filename: str) -> str:
    """A file name that stays inside its folder: no directories, no leading dots, tame characters."""
    name = _UNSAFE.sub("_", Path(filename.replace("\\", "/")).name).strip(" .")
    if not name:
        raise UploadError(f"{filename!r} is not a usable file name", "rename the file and upload it again")
    stem, suffix = os.path.splitext(name)
    return stem[: MAX_NAME_CHARS - len(suffix)] + suffix
