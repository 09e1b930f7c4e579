"""The knowledge desk: every admin action on the knowledge base, from any front end (Slack,
Discord, the web console, the command line).

Upload (the name, type and size checked before any download, the file parsed before it is
saved, then saved into its collection's folder, or with shared state into PostgreSQL, from
where every replica's index runs write it into their folders, and indexed at once), list, remove (that
document's chunks and nothing else), index, re-index (a request in the service's queue), and
the index's status. Each action returns a typed result the front end renders. Every change to
the index is an index run (rag.operations.index_runs): in the run history, `teambot status`
and the metrics. A file that fails any step leaves the folder and the index as they were, and
fails alone: whatever went wrong becomes a TeambotError naming it. A file replaced by an upload
or removed is kept in the folder's ``.versions/NAME/`` (the newest rag.keep_versions of each
name), which index runs never read.

Blocking: front ends call it from a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.errors import TeambotError
from config.settings import Settings, check_collection_name
from rag.ingest.documents import SUPPORTED_SUFFIXES, DocumentError
from rag.ingest.indexer import IndexProgress, IndexReport
from rag.operations.file_names import UploadError, safe_name
from rag.operations.index_runs import IndexRuns
from rag.operations.lease import LeaseState, read_lease
from rag.operations.run_history import Run, RunProgress
from rag.store.manifest import FileRecord, Manifest

log = logging.getLogger(__name__)

FOLLOW_POLL_S = 0.25
VERSIONS_DIR = ".versions"  # hidden: index runs skip it


@dataclass(frozen=True)
class Added:
    collection: str
    name: str
    chunks: int
    replaced: bool  # a file of that name was there before
    run_id: int | None  # None when the index run could not even be recorded
    previous: str | None = None  # where the replaced file was kept, relative to the collection's folder
    not_indexed: str | None = None  # saved, but its index run failed (why): the next run tries again


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

    @classmethod
    def of(cls, record: FileRecord) -> Document:
        return cls(record.collection, record.path, record.title, record.chunks, record.size, record.state, record.error, record.indexed_at)


@dataclass(frozen=True)
class Removed:
    document: Document
    run_id: int
    kept: str | None = None  # where the file was kept, relative to the collection's folder


@dataclass(frozen=True)
class ReindexRequested:
    request_id: int
    running: Run | None  # a run in progress, which the request waits for
    runner: str  # "this process", "another process" (a replica holds the index lease) or "" (none now)

    def text(self) -> str:
        """What the person who asked is told, on any platform."""
        if self.running is not None:
            return (
                f"Re-index queued (request {self.request_id}): it starts when the run in progress ends "
                f"({self.running.files_done}/{self.running.files_total} files done)."
            )
        if self.runner == "another process":
            return f"Re-index queued (request {self.request_id}): another teambot replica runs the index and picks it up within seconds."
        if not self.runner:
            return f"Re-index queued (request {self.request_id}): it runs as soon as a `teambot serve` takes over the index."
        return f"Re-index started (request {self.request_id}): every collection's folder is checked; only changed files are embedded."


@dataclass(frozen=True)
class CollectionStatus:
    collection: str
    folder: str | None
    documents: int
    chunks: int
    failed: list[dict[str, str]]  # {"path", "error"}
    pending: int
    last_indexed_at: float | None


@dataclass(frozen=True)
class IndexStatus:
    state: str  # where the manifest, runs and lease are kept: SQLite files, or PostgreSQL (state_url)
    service: LeaseState | None  # the `teambot serve` that runs the index, if any ever did
    waiting_requests: int
    running: Run | None
    runs: list[Run]
    collections: list[CollectionStatus]

    def to_json(self) -> dict[str, Any]:
        service = self.service
        return {
            "state": self.state,
            "service": {"holder": service.holder, "alive": service.alive, **service.info} if service else None,
            "waiting_requests": self.waiting_requests,
            "running": self.running.to_json() if self.running else None,
            "runs": [r.to_json() for r in self.runs],
            "collections": [asdict(c) for c in self.collections],
        }


class KnowledgeDesk:
    def __init__(self, settings: Settings, manifest: Manifest, runs: IndexRuns, on_upload: Callable[[bool], None] | None = None) -> None:
        """``on_upload(added)`` is told of every upload: added (True) or refused (False)."""
        self._settings = settings
        self._manifest = manifest
        self._runs = runs
        self._indexer = runs.indexer
        self._history = runs.history
        self._shared = runs.uploads.uploads if runs.uploads is not None else None  # with shared state: where uploads are kept
        self._on_upload = on_upload
        self.max_bytes = int(settings.rag.max_file_mb * 1024 * 1024)

    # --- uploads --------------------------------------------------------------------------

    def check(self, filename: str, size: int | None) -> str:
        """The name the file will be saved under; UploadError if its type or size is refused (before any download)."""
        try:
            return self._check(filename, size)
        except UploadError:
            self._count(False)
            raise

    def add(self, collection: str, filename: str, data: bytes, trigger: str) -> Added:
        """Saves and indexes one file (one of the same name is replaced, and kept in .versions/);
        UploadError if it is refused, another TeambotError if teambot failed; nothing else.
        ``trigger`` names who asked in the run history (e.g. "slack:upload")."""
        check_collection_name(collection)
        name = self.check(filename, len(data))
        try:
            added = self._add(collection, name, data, trigger)
        except TeambotError:
            self._count(False)
            raise
        except Exception as exc:  # a bug of teambot's or a library's: this file fails, not the caller
            self._count(False)
            log.exception("adding %s to collection %s failed", name, collection)
            raise TeambotError(f"{name} was not added: unexpected error ({type(exc).__name__}: {exc})", "it is in teambot's log") from None
        self._count(True)
        return added

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

    def _add(self, collection: str, name: str, data: bytes, trigger: str) -> Added:
        folder = self._settings.collection_dir(collection)
        final = folder / name
        # A hidden name: index runs skip it while it is being checked.
        staging = folder / f".upload-{os.getpid()}-{time.monotonic_ns()}{final.suffix}"
        try:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                staging.write_bytes(data)
            except OSError as exc:
                raise TeambotError(
                    f"{name} was not added: it could not be saved in {folder} ({exc.strerror or exc})",
                    "check the folder's free space and permissions; nothing was changed",
                ) from None
            try:
                self._indexer.reader.read(staging)
            except DocumentError as exc:
                raise UploadError(str(exc.message).replace(staging.name, name), exc.hint) from None
            replaced = final.exists()
            try:
                if self._shared is not None:  # every replica's next run writes it into its folder: this one's, first
                    self._shared.put(collection, name, data, self._settings.rag.keep_versions)
                    previous = None
                else:
                    previous = self._keep_version(folder, name, move=False) if replaced else None
                    os.replace(staging, final)
            except OSError as exc:
                raise TeambotError(
                    f"{name} was not added: it could not be saved in {folder} ({exc.strerror or exc})",
                    "check the folder's free space and permissions; the file there before is unchanged",
                ) from None
        finally:
            staging.unlink(missing_ok=True)
        # The file is saved from here on: a failed index run does not undo that (the next run
        # indexes it), so it is reported as saved but not searchable yet, not as refused.
        try:
            run = self._runs.run(trigger, lambda progress: [self._indexer.run([final], collection, progress=progress)])
        except TeambotError as exc:  # e.g. the store is locked or down
            log.warning("upload: %s was saved in %s but its index run failed: %s", name, collection, exc.message)
            return Added(collection, name, 0, replaced, None, previous, not_indexed=exc.message)
        report = run.report_for(collection)
        if isinstance(report, IndexReport) and report.failed:
            return Added(collection, name, 0, replaced, run.id, previous, not_indexed=str(report.failed[0]["error"]))
        if not isinstance(report, IndexReport):  # the collection could not be indexed at all
            error = report.error if report is not None else f"run {run.id} did not index collection {collection}"
            return Added(collection, name, 0, replaced, run.id, previous, not_indexed=error)
        record = self._record(collection, folder, name)
        return Added(collection, name, record.chunks if record else 0, replaced, run.id, previous)

    def _keep_version(self, folder: Path, name: str, *, move: bool) -> str | None:
        """Keeps the file ``name`` of ``folder`` as ``.versions/NAME/<UTC time><suffix>`` (moved, or
        copied so that the name never goes missing) and drops all but the newest rag.keep_versions
        there; the kept path relative to ``folder``, or None when no version is kept."""
        keep = self._settings.rag.keep_versions
        if keep == 0:
            return None
        versions = folder / VERSIONS_DIR / name
        versions.mkdir(parents=True, exist_ok=True)
        kept = versions / (datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ") + Path(name).suffix)
        current = folder / name
        if move:
            os.replace(current, kept)
        else:
            try:
                os.link(current, kept)  # the new file replaces the name; the old content stays here
            except OSError:  # a file system without hard links
                shutil.copy2(current, kept)
        for old in sorted(versions.iterdir())[:-keep]:
            old.unlink(missing_ok=True)
        return kept.relative_to(folder).as_posix()

    def _count(self, added: bool) -> None:
        if self._on_upload is not None:
            self._on_upload(added)

    # --- documents ------------------------------------------------------------------------

    def collections(self) -> list[str]:
        """Every configured collection and every collection with documents."""
        return sorted(set(self._settings.collection_dirs()) | set(self._manifest.collections()))

    def documents(self, collection: str) -> list[Document]:
        check_collection_name(collection)
        return sorted((Document.of(r) for r in self._manifest.files(collection).values()), key=lambda d: d.path)

    def remove(self, collection: str, name: str, trigger: str) -> Removed:
        """Deletes a file from the collection's folder and its chunks from the index (no other document is touched)."""
        check_collection_name(collection)
        folder = self._settings.collection_dir(collection)
        record = self._record(collection, folder, name)
        path = folder / name
        if record is None or not path.resolve().is_relative_to(folder.resolve()):
            known = ", ".join(d.path for d in self.documents(collection)[:20]) or "none"
            raise UploadError(f"collection {collection!r} has no document {name!r}", f"its documents: {known}")
        if self._shared is not None:  # every replica deletes its copy of this content at its next run
            self._shared.remove(collection, name, record.sha256, self._settings.rag.keep_versions)
        kept = self._keep_version(folder, name, move=True) if path.is_file() else None
        path.unlink(missing_ok=True)
        run = self._runs.run(trigger, lambda progress: [self._indexer.remove(collection, [record])])
        return Removed(Document.of(record), run.id, kept)

    def _record(self, collection: str, folder: Path, name: str) -> FileRecord | None:
        root = self._indexer.root_of(collection, folder.resolve())
        return next((r for r in self._manifest.files(collection, root).values() if r.path == name), None)

    # --- index runs -----------------------------------------------------------------------

    def index(
        self,
        paths: Sequence[Path] | None,
        collection: str,
        *,
        rebuild: bool = False,
        progress: IndexProgress | None = None,
        trigger: str = "cli",
        allow_mass_delete: bool = False,
    ) -> IndexReport:
        """Indexes files or folders (default: the collection's folder) at once, as one recorded run."""

        def work(run_progress: RunProgress) -> list[IndexReport]:
            shown = _BothProgress(progress, run_progress) if progress else run_progress
            return [self._indexer.run(paths or None, collection, rebuild=rebuild, progress=shown, allow_mass_delete=allow_mass_delete)]

        report = self._runs.run(trigger, work).report_for(collection)
        assert isinstance(report, IndexReport)
        return report

    def index_service(self) -> LeaseState | None:
        """The `teambot serve` that runs the index queue now (a live index lease), or None."""
        lease = read_lease(self._history.db)
        return lease if lease is not None and lease.alive else None

    def request_reindex(self, trigger: str) -> ReindexRequested:
        """Queues a re-index of every collection; the process holding the index lease runs it within a second."""
        request = self._history.request(trigger)
        lease = self.index_service()
        runner = "" if lease is None else "this process" if lease.holder == self._runs.holder else "another process"
        return ReindexRequested(request.id, self._history.running(), runner)

    def follow(self, request_id: int, on_progress: Callable[[Run], None]) -> Run | None:
        """Waits until the run that serves a queued request ends, reporting its progress; None if
        the index service died before a run took the request (the caller may then index itself).
        A run whose process dies gives its requests back to the queue, so they are followed into the next run."""
        while True:
            request = self._history.get_request(request_id)
            if request is None:
                return None
            if request.run_id is not None:
                run = self._history.get(request.run_id)
                if run is not None:
                    on_progress(run)
                    if run.state != "running":
                        return run
            elif self.index_service() is None:
                return None
            time.sleep(FOLLOW_POLL_S)

    def status(self, runs: int = 5) -> IndexStatus:
        """Who runs the index, the run in progress, the last runs and each collection's documents (the data dir only, never Chroma)."""
        collections = []
        folders = self._settings.collection_dirs()
        for name in self.collections():
            files = list(self._manifest.files(name).values())
            folder = folders.get(name)
            collections.append(
                CollectionStatus(
                    collection=name,
                    folder=str(folder) if folder else None,
                    documents=sum(f.state != "failed" for f in files),
                    chunks=sum(f.chunks for f in files),
                    failed=[{"path": f.path, "error": f.error} for f in files if f.state == "failed"],
                    pending=sum(f.state == "pending" for f in files),
                    last_indexed_at=max((f.indexed_at for f in files), default=None),
                )
            )
        return IndexStatus(
            state=self._history.db.kind,
            service=read_lease(self._history.db),
            waiting_requests=len(self._history.waiting()),
            running=self._history.running(),
            runs=self._history.recent(runs),
            collections=collections,
        )


class _BothProgress:
    """Progress to the caller's display and to the run history."""

    def __init__(self, *targets: IndexProgress) -> None:
        self._targets = targets

    def planned(self, files: int) -> None:
        for target in self._targets:
            target.planned(files)

    def advance(self, path: str) -> None:
        for target in self._targets:
            target.advance(path)
