"""Incremental indexing of knowledge files into a collection.

A run compares each file's SHA-256 with the manifest: new files are added, changed files have
their chunks replaced, files gone from a scanned folder lose their chunks, and unchanged files
cost only the hash. Files are parsed, embedded and written in batches; each batch is marked
pending in the manifest first, so a run that dies leaves nothing the next run cannot finish.
A file that cannot be read is reported and skipped, and whatever it had in the index before
stays there until the file is fixed or removed. Files are read through rag.ingest.isolation,
with memory and CPU limits. A run that would delete most of a collection because its files are
gone (an emptied folder is what an unmounted share looks like) stops before deleting anything,
unless mass deletes are allowed (rag.allow_mass_delete, `teambot index --allow-mass-delete`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from config.errors import TeambotError
from config.settings import DEFAULT_COLLECTION, Settings, check_collection_name
from rag.ingest.chunking import Chunk, Chunker
from rag.ingest.documents import DocumentError, ParsedDocument, supported
from rag.ingest.embedder import load_embedder
from rag.ingest.isolation import DocumentReader
from rag.search.keyword import tokenize
from rag.store.chroma import ChromaStore
from rag.store.manifest import FileRecord, Manifest

log = logging.getLogger(__name__)

# A batch ends at whichever comes first; bigger batches embed faster, smaller ones show progress sooner.
BATCH_FILES = 32
BATCH_CHUNKS = 512
IGNORED_NAME_PREFIXES = (".", "~$")  # hidden files, editors' lock files (and .versions/ of replaced uploads)
MASS_DELETE_FEW_FILES = 3  # a run may delete this many gone files of a collection whatever its share (unless that is all of them)


class IndexCancelled(Exception):
    """An index run was asked to stop; it stopped between two batches, leaving the index consistent.

    Not a TeambotError: stopping is an outcome the caller asked for, not a problem to report."""


class MassDeleteRefused(TeambotError):
    """A run would delete most of a collection because its files are gone; nothing was deleted."""


class IndexProgress(Protocol):
    def planned(self, files: int) -> None:
        """How many files this run will parse and embed."""

    def advance(self, path: str) -> None:
        """One of them is done (indexed or failed)."""


@dataclass
class IndexReport:
    collection: str
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}
    chunks: int = 0  # chunks embedded and written by this run
    total_chunks: int = 0  # chunks in the collection afterwards
    seconds: float = 0.0
    reembedded: int = 0  # files embedded again because rag.embed_model changed

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class _Root:
    """A folder (or one file) whose files the manifest is reconciled with."""

    root: Path
    files: list[Path]
    single_file: bool
    skipped: dict[Path, str] = field(default_factory=dict)  # links not followed, and why


@dataclass(frozen=True)
class _Todo:
    path: Path
    record: FileRecord  # what the manifest will say once it is indexed
    is_new: bool  # for the report: it had no chunks before
    known: bool  # the manifest has a row for it, so the store may hold chunks of it


COLLECTION_ROOT = "collection:"  # a manifest root that names a collection's own folder, wherever a replica keeps it


def doc_id_for(collection: str, root: str, relpath: str) -> str:
    return hashlib.sha1(f"{collection}\0{root}\0{relpath}".encode()).hexdigest()[:20]


def root_of(settings: Settings, collection: str, folder: Path) -> str:
    """How the manifest names a scanned folder: a collection's own folder by the collection's name,
    wherever it is (a moved rag.knowledge_dir, a data dir copied with its documents, each replica's
    copy with shared state: the same files, not new ones); any other folder by its absolute path."""
    if folder == settings.collection_dir(collection).resolve():
        return COLLECTION_ROOT + collection
    return str(folder)


def folder_of(settings: Settings, root: str) -> Path:
    """The folder a manifest root names, on this replica."""
    if root.startswith(COLLECTION_ROOT):
        return settings.collection_dir(root.removeprefix(COLLECTION_ROOT))
    return Path(root)


def chunk_id_for(doc_id: str, position: int) -> str:
    return f"{doc_id}:{position}"


class Indexer:
    def __init__(self, settings: Settings, store: ChromaStore, manifest: Manifest) -> None:
        self._settings = settings
        self._store = store
        self._manifest = manifest
        self._max_bytes = int(settings.rag.max_file_mb * 1024 * 1024)
        self._chunker: Chunker | None = None
        self.reader = DocumentReader.of(settings)  # close() it when done
        self._held = threading.local()  # how deeply this thread holds the run lock

    def run(
        self,
        paths: Sequence[Path] | None = None,
        collection: str = DEFAULT_COLLECTION,
        *,
        rebuild: bool = False,
        progress: IndexProgress | None = None,
        cancel: threading.Event | None = None,
        allow_mass_delete: bool = False,
    ) -> IndexReport:
        """Indexes ``paths`` (default: the collection's configured folder) into ``collection``.

        When ``cancel`` is set the run stops before its next batch and raises IndexCancelled.
        MassDeleteRefused when it would delete most of the collection, unless ``allow_mass_delete``
        or rag.allow_mass_delete."""
        check_collection_name(collection)
        started = time.monotonic()
        report = IndexReport(collection)
        if not paths:
            paths = [self._collection_dir(collection)]
        allow_mass_delete = allow_mass_delete or self._settings.rag.allow_mass_delete
        with self.exclusive():
            self._store.recover(collection)
            if rebuild:
                self._store.drop(collection)
                self._manifest.drop_collection(collection)
            elif self._store.model_of(collection) not in (None, self._store.embed_model):
                self._reembed(collection, report, progress, cancel, allow_mass_delete)
            todo = self._reconcile(paths, collection, report, allow_mass_delete)
            if progress:
                progress.planned(len(todo))
            for batch in _batches(todo):
                if cancel is not None and cancel.is_set():
                    raise IndexCancelled(f"the index run of collection {collection!r} was stopped; the next run completes it")
                self._index_batch(batch, collection, report, progress)
        report.total_chunks = sum(r.chunks for r in self._manifest.files(collection).values())
        report.seconds = round(time.monotonic() - started, 3)
        log.info(
            "indexed collection %s: %d added, %d updated, %d deleted, %d unchanged, %d failed, %d chunks in %.1f s",
            collection, report.added, report.updated, report.deleted, report.unchanged, len(report.failed), report.chunks, report.seconds,
        )  # fmt: skip
        return report

    def _reembed(
        self, collection: str, report: IndexReport, progress: IndexProgress | None, cancel: threading.Event | None, allow_mass_delete: bool
    ) -> None:
        """Every indexed file of the collection embedded again with rag.embed_model, into a staging
        collection, then swapped in. Until the swap, searches use the live collection with the model
        it was made with; a run stopped on the way starts the staging collection again."""
        was = self._store.model_of(collection)
        log.info("collection %s was embedded with %s; embedding it again with %s", collection, was, self._store.embed_model)
        staging = self._store.start_staging(collection)
        records = [r for r in self._manifest.files(collection).values() if r.state == "indexed"]
        if progress:
            progress.planned(len(records))
        done: list[FileRecord] = []
        for batch in _batches([_Todo(self.folder_of(r.root) / r.path, r, is_new=False, known=True) for r in records]):
            if cancel is not None and cancel.is_set():
                raise IndexCancelled(f"re-embedding collection {collection!r} was stopped; the next run starts it again")
            parsed = []
            for item in batch:
                try:
                    data = item.path.read_bytes()
                    doc = self.reader.read(item.path)
                    parsed.append((item, doc, self._chunks(doc), hashlib.sha256(data).hexdigest()))
                except (OSError, DocumentError):
                    pass  # gone or broken now: the scan that follows removes or reports it
            if parsed:
                self._store.add(staging, self._nodes([(item, doc, chunks) for item, doc, chunks, _ in parsed], collection))
                now = time.time()
                done.extend(
                    FileRecord(**{**item.record.__dict__, "sha256": sha, "title": doc.title, "chunks": len(chunks), "indexed_at": now})
                    for item, doc, chunks, sha in parsed
                )
            if progress:
                for item in batch:
                    progress.advance(item.record.path)
        lost = [r for r in records if r.doc_id not in {d.doc_id for d in done}]
        if not allow_mass_delete:
            self._check_mass_delete(collection, len(lost), sorted({r.root for r in lost}))
        self._store.swap_in(collection)
        self._manifest.remove(collection, [r.doc_id for r in lost])
        self._manifest.save(done)
        report.reembedded = len(done)
        report.chunks += sum(r.chunks for r in done)
        log.info("collection %s now holds %d files embedded with %s", collection, len(done), self._store.embed_model)

    def remove(self, collection: str, records: Sequence[FileRecord]) -> IndexReport:
        """Deletes these documents' chunks and manifest rows, and nothing else (no folder is scanned)."""
        started = time.monotonic()
        report = IndexReport(collection)
        with self.exclusive():
            doc_ids = [r.doc_id for r in records]
            self._store.delete_documents(collection, doc_ids)
            self._manifest.remove(collection, doc_ids)
            report.deleted = len(doc_ids)
        report.total_chunks = sum(r.chunks for r in self._manifest.files(collection).values())
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def root_of(self, collection: str, folder: Path) -> str:
        return root_of(self._settings, collection, folder)

    def folder_of(self, root: str) -> Path:
        return folder_of(self._settings, root)

    def _collection_dir(self, collection: str) -> Path:
        folder = self._settings.collection_dirs().get(collection)
        if folder is None:
            raise TeambotError(
                f"collection {collection!r} has no configured folder",
                f"give the files to index (`teambot index PATH --collection {collection}`) or add it under [rag.collections]",
            )
        if not folder.is_dir():
            raise TeambotError(
                f"the knowledge folder {folder} of collection {collection!r} does not exist",
                "create it and put documents in it, or fix rag.knowledge_dir / [rag.collections]",
            )
        return folder

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One index run at a time per data dir (a file lock), or across every replica with shared
        state (a PostgreSQL advisory lock), and across threads; a thread may nest it."""
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        with self._manifest.db.exclusive("index"):
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0

    def _reconcile(self, paths: Sequence[Path], collection: str, report: IndexReport, allow_mass_delete: bool) -> list[_Todo]:
        """Sorts every file into added / updated / unchanged / failed, and deletes what is gone."""
        todo: list[_Todo] = []
        gone: dict[str, list[str]] = {}  # scanned folder -> doc ids of its files that are gone
        for given in paths:
            target = _scan(given)
            if target is None:
                report.failed.append({"path": str(given), "error": "no such file or folder"})
                continue
            root = self.root_of(collection, target.root)
            if root != str(target.root):  # rows written before the collection's folder was named by the collection
                self._manifest.rename_root(collection, str(target.root), root)
            known = self._manifest.files(collection, root)
            by_path = {r.path: r for r in known.values()}  # a row keeps its doc_id (e.g. one migrated to shared state)
            seen: set[str] = set()
            for path in target.files:
                relpath = path.relative_to(target.root).as_posix()
                record = by_path.get(relpath)
                doc_id = record.doc_id if record else doc_id_for(collection, root, relpath)
                seen.add(doc_id)
                item = self._classify(path, relpath, doc_id, collection, root, record, report)
                if item is not None:
                    todo.append(item)
            for path, why in target.skipped.items():  # not seen: what such a link put in the index before is removed
                report.failed.append({"path": path.relative_to(target.root).as_posix(), "error": why})
            if not target.single_file:
                gone[root] = [doc_id for doc_id in known if doc_id not in seen]
        deleted = [doc_id for doc_ids in gone.values() for doc_id in doc_ids]
        if deleted and not allow_mass_delete:
            self._check_mass_delete(collection, len(deleted), [str(self.folder_of(root)) for root, doc_ids in gone.items() if doc_ids])
        if deleted:
            self._store.delete_documents(collection, deleted)
            self._manifest.remove(collection, deleted)
            report.deleted += len(deleted)
        return todo

    def _check_mass_delete(self, collection: str, deleting: int, folders: list[str]) -> None:
        """MassDeleteRefused if deleting this many of the collection's documents is all or most of them."""
        documents = len(self._manifest.files(collection))
        share = self._settings.rag.max_delete_share
        if deleting < documents and (deleting <= MASS_DELETE_FEW_FILES or deleting <= share * documents):
            return
        where = ", ".join(folders)
        log.warning("collection %s: refusing to delete %d of its %d documents (files gone from %s)", collection, deleting, documents, where)
        raise MassDeleteRefused(
            f"collection {collection!r}: this run would delete {deleting} of its {documents} documents because their files are gone "
            f"from {where}; nothing was deleted (more than rag.max_delete_share = {share:g} of a collection, or all of it, is refused)",
            "if that folder is an unmounted share or volume, mount it again; if the files were removed on purpose, "
            "run `teambot index --allow-mass-delete` once (or set rag.allow_mass_delete = true)",
        )

    def _classify(
        self, path: Path, relpath: str, doc_id: str, collection: str, root: str, known: FileRecord | None, report: IndexReport
    ) -> _Todo | None:
        if not supported(path):
            report.failed.append({"path": relpath, "error": str(DocumentError(f"unsupported file type '{path.suffix.lower() or '(none)'}'"))})
            return None
        try:
            size = path.stat().st_size
            if size > self._max_bytes:
                raise DocumentError(f"{size / 1024 / 1024:.1f} MB is over the limit of rag.max_file_mb = {self._settings.rag.max_file_mb:g}")
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        except (OSError, DocumentError) as exc:
            report.failed.append({"path": relpath, "error": str(exc)})
            return None
        if known is not None and known.state != "pending" and known.sha256 == sha:
            if known.state == "failed":
                report.failed.append({"path": relpath, "error": known.error})
            else:
                report.unchanged += 1
            return None
        record = FileRecord(
            collection=collection, doc_id=doc_id, root=root, path=relpath, sha256=sha, size=size,
            title="", chunks=known.chunks if known else 0, state="indexed", error="", indexed_at=0.0,
        )  # fmt: skip
        had_chunks = known is not None and known.sha256 != "" and (known.state != "failed" or known.chunks > 0)
        return _Todo(path, record, is_new=not had_chunks, known=known is not None)

    def _index_batch(self, batch: list[_Todo], collection: str, report: IndexReport, progress: IndexProgress | None) -> None:
        parsed: list[tuple[_Todo, ParsedDocument, list[Chunk]]] = []
        failures: list[FileRecord] = []
        for item in batch:
            try:
                doc = self.reader.read(item.path)
                chunks = self._chunks(doc)
            except DocumentError as exc:
                failures.append(_failed(item.record, str(exc)))
            except Exception as exc:  # a parser library's own bug must not stop the run
                log.exception("unexpected error reading %s", item.record.path)
                failures.append(_failed(item.record, f"{item.path.name}: unexpected error while reading ({type(exc).__name__}: {exc})"))
            else:
                parsed.append((item, doc, chunks))
        for record in failures:
            report.failed.append({"path": record.path, "error": record.error})
        if failures:
            self._manifest.save(failures)

        if parsed:
            self._manifest.mark_pending(item.record for item, _, _ in parsed)
            nodes = self._nodes(parsed, collection)
            # Whatever a document had in the store goes first (its old version, or what a dead run left).
            self._store.delete_documents(collection, [item.record.doc_id for item, _, _ in parsed if item.known])
            self._store.add(collection, nodes)
            now = time.time()
            self._manifest.save(
                FileRecord(**{**item.record.__dict__, "title": doc.title, "chunks": len(chunks), "indexed_at": now})
                for item, doc, chunks in parsed
            )
            report.chunks += len(nodes)
            for item, _, _ in parsed:
                if item.is_new:
                    report.added += 1
                else:
                    report.updated += 1
        if progress:
            for item in batch:
                progress.advance(item.record.path)

    def _chunks(self, doc: ParsedDocument) -> list[Chunk]:
        if self._chunker is None:
            rag = self._settings.rag
            self._chunker = Chunker(rag.chunk_size, rag.chunk_overlap, rag.embed_model)
        return self._chunker.split(doc)

    def _nodes(self, parsed: list[tuple[_Todo, ParsedDocument, list[Chunk]]], collection: str) -> list:  # type: ignore[type-arg]
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        rag = self._settings.rag
        embedder = load_embedder(rag.embed_model, rag.embed_batch_size)
        texts = [chunk.embedding_text(doc.title) for _, doc, chunks in parsed for chunk in chunks]
        vectors = iter(embedder.passages(texts))
        nodes = []
        for item, doc, chunks in parsed:
            for chunk in chunks:
                nodes.append(
                    TextNode(
                        id_=chunk_id_for(item.record.doc_id, chunk.position),
                        text=chunk.text,
                        embedding=next(vectors),
                        metadata={
                            "collection": collection,
                            "source": item.record.path,
                            "title": doc.title,
                            "heading": chunk.heading,
                            "position": chunk.position,
                            "page": chunk.page or "",
                            "keywords": " ".join(tokenize(f"{doc.title}\n{chunk.heading}\n{chunk.text}")),
                        },
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=item.record.doc_id)},
                    )
                )
        return nodes


def _failed(record: FileRecord, error: str) -> FileRecord:
    return FileRecord(**{**record.__dict__, "state": "failed", "error": error, "indexed_at": time.time()})


def _batches(todo: list[_Todo]) -> Iterator[list[_Todo]]:
    batch: list[_Todo] = []
    size = 0
    for item in todo:
        batch.append(item)
        size += item.record.size
        # File size stands in for the chunk count, which is known only after parsing (about 1 KB a chunk).
        if len(batch) >= BATCH_FILES or size >= BATCH_CHUNKS * 1024:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _scan(given: Path) -> _Root | None:
    path = given.expanduser().resolve()
    if path.is_file():
        return _Root(path.parent, [path], single_file=True)
    if not path.is_dir():
        return None
    walk = folder_files(path)
    return _Root(path, walk.files, single_file=False, skipped=walk.skipped)


@dataclass(frozen=True)
class FolderWalk:
    files: list[Path]  # what an index run reads
    skipped: dict[Path, str]  # links that are not followed, and why (for the run's report)


LINK_OUTSIDE = "not read: a link to a file outside the knowledge folder (teambot follows links only within the folder; copy the file in instead)"
LINK_BROKEN = "not read: a link to nothing (its target is gone)"
LINK_FOLDER = "not read: a link to a folder (teambot does not follow links to folders; put the files themselves in the folder)"


def folder_files(path: Path) -> FolderWalk:
    """The files an index run reads in a folder, in a stable order: no hidden files or folders
    (``.versions/`` included), no editors' lock files, and no link that leaves the folder.

    A folder synced from a shared drive or a repository may hold a link to ``/etc/passwd`` or
    ``/proc/self/environ``; what is indexed is shown to every chat user, so a link is followed
    only when it leads to a file inside the folder, and a link to a folder never (it could lead
    back up, or out). Whatever is not followed is listed with the reason."""
    root = path.resolve()
    files: list[Path] = []
    skipped: dict[Path, str] = {}
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        for name in [d for d in dirnames if (here / d).is_symlink()]:
            dirnames.remove(name)
            if not name.startswith(IGNORED_NAME_PREFIXES):
                skipped[here / name] = LINK_FOLDER
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(IGNORED_NAME_PREFIXES))
        for name in sorted(filenames):
            if name.startswith(IGNORED_NAME_PREFIXES):
                continue
            file = here / name
            problem = link_problem(file, root)
            if problem:
                skipped[file] = problem
            else:
                files.append(file)
    return FolderWalk(files, skipped)


def link_problem(path: Path, root: Path) -> str | None:
    """Why ``path`` (a name inside the folder ``root``, resolved) must not be read: it is a link
    to something missing, to a folder, or to a file outside ``root``. None for a plain file or a
    link to a file inside ``root``."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if not target.exists():
        return LINK_BROKEN
    if target.is_dir():
        return LINK_FOLDER
    return None if target.is_relative_to(root) else LINK_OUTSIDE
