"""Builds a running teambot from its settings, in one place: each part gets what it needs in its
constructor. The knowledge parts (store, manifest, run history, indexer, retriever, index
runs, knowledge desk; with ``state_url``, the shared uploads) always; the LLM server, its client, the answer engine and the answer
flow when asked for; the metrics, the answer log, the platforms' shared state and the LLM server's supervisor (which restarts
it when it dies) when serving. Stops what it started on exit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot import guard
from bot.answer_log import AnswerLog
from bot.answering import AnswerFlow
from bot.core import AnswerEngine
from bot.metrics import Metrics
from bot.platform_state import PlatformState
from config.errors import ConfigError
from config.settings import Settings
from inference.activity import LLMActivity
from inference.client import ChatClient, Endpoint
from inference.process import Progress
from inference.server import LLMServer, make_server
from inference.supervisor import ServerSupervisor, SupervisedServer
from rag.ingest.embedder import embed_model_id
from rag.ingest.indexer import Indexer
from rag.operations.desk import KnowledgeDesk
from rag.operations.index_runs import IndexRuns
from rag.operations.lease import new_holder_id
from rag.operations.run_history import RunHistory
from rag.operations.shared_uploads import SharedUploads, UploadSync
from rag.search.retriever import Retriever
from rag.store.chroma import ChromaStore
from rag.store.manifest import Manifest

log = logging.getLogger(__name__)

UPLOADS_SYNCED = "shared-uploads-synced"  # in the data dir: the newest shared upload this replica wrote into its folders


@dataclass
class Runtime:
    settings: Settings
    store: ChromaStore
    manifest: Manifest
    history: RunHistory
    indexer: Indexer
    retriever: Retriever
    runs: IndexRuns
    desk: KnowledgeDesk
    metrics: Metrics | None = None  # serving only
    answers: AnswerLog | None = None  # serving only
    platform: PlatformState | None = None  # serving only: event ids, console sessions
    server: LLMServer | None = None
    supervisor: ServerSupervisor | None = None  # serving with a server teambot started
    endpoint: Endpoint | None = None
    activity: LLMActivity | None = None  # with the LLM: its requests in flight and whether they progress
    engine: AnswerEngine | None = None
    flow: AnswerFlow | None = None

    def require_engine(self) -> AnswerEngine:
        assert self.engine is not None, "the runtime was opened without the LLM"
        return self.engine

    def require_flow(self) -> AnswerFlow:
        assert self.flow is not None, "the runtime was opened without the LLM"
        return self.flow

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.indexer.reader.close()
        self.manifest.close()
        self.history.close()
        if self.runs.uploads is not None:
            self.runs.uploads.uploads.close()
        for part in (self.answers, self.platform):
            if part is not None:
                part.close()


def knowledge_runtime(settings: Settings, *, serving: bool = False) -> Runtime:
    """The parts that need no LLM: enough for indexing, search and the knowledge desk. With
    ``serving``, also the metrics (every index run and upload counted) and the answer log.
    Use it in a ``with`` block."""
    store = ChromaStore(
        settings.data_dir / "chroma", embed_model_id(settings.rag.embed_model), settings.rag.store_timeout_s, url=settings.rag.chroma_url
    )
    url, data = settings.state_url, settings.data_dir
    manifest = Manifest(Manifest.database(url, data))
    if url:
        check_shared_store(manifest, store)
    history = RunHistory(RunHistory.database(url, data))
    metrics = Metrics(manifest) if serving else None
    indexer = Indexer(settings, store, manifest)
    uploads = (
        UploadSync(SharedUploads(SharedUploads.database(url, data)), settings.collection_dirs, settings.uploads_dir, data / UPLOADS_SYNCED)
        if url
        else None
    )
    runs = IndexRuns(indexer, history, new_holder_id(), on_run=metrics.observe_run if metrics else None, uploads=uploads)
    return Runtime(
        settings=settings,
        store=store,
        manifest=manifest,
        history=history,
        indexer=indexer,
        retriever=Retriever(settings.rag, store, manifest, models_dir=settings.models_dir),
        runs=runs,
        desk=KnowledgeDesk(settings, manifest, runs, on_upload=metrics.observe_upload if metrics else None),
        metrics=metrics,
        answers=AnswerLog(AnswerLog.database(url, data), settings.bot.answer_retention_days) if serving else None,
        platform=PlatformState(PlatformState.database(url, data)) if serving else None,
    )


def check_shared_store(manifest: Manifest, store: ChromaStore) -> None:
    """With shared state, every replica must use the Chroma store the shared manifest describes:
    one with its own store would find nothing the others indexed, and never index it."""
    bound = manifest.bind_store(store.identity)
    if bound != store.identity:
        manifest.close()
        raise ConfigError(
            f"the shared state (state_url) describes the Chroma store {bound}, but this replica uses {store.identity}",
            "set rag.chroma_url (TEAMBOT_RAG__CHROMA_URL) to that store on every replica: replicas share one Chroma server",
        )


@asynccontextmanager
async def open_runtime(settings: Settings, *, with_llm: bool, serving: bool = False, progress: Progress | None = None) -> AsyncIterator[Runtime]:
    """The runtime; with the LLM, its server is started (while the embedder loads) and stopped at exit."""
    with knowledge_runtime(settings, serving=serving) as runtime:
        if not with_llm:
            yield runtime
            return
        runtime.server = make_server(settings)

        def load() -> None:
            runtime.retriever.warm_up(list(settings.collection_dirs()))
            if settings.bot.answer_mode != "extractive":
                guard.warm_up()

        warm_up = asyncio.create_task(asyncio.to_thread(load))
        try:
            runtime.endpoint = await runtime.server.start(progress)
            await warm_up
            inference = settings.inference
            runtime.activity = LLMActivity(inference.hang_timeout_s)
            if serving and isinstance(runtime.server, SupervisedServer):
                runtime.supervisor = ServerSupervisor(runtime.server, inference, runtime.activity)
                runtime.supervisor.start()
            client = ChatClient(
                runtime.endpoint,
                timeout_s=inference.request_timeout_s,
                max_retries=inference.max_retries,
                temperature=inference.temperature,
                max_tokens=inference.max_tokens,
                unavailable=runtime.supervisor.unavailable if runtime.supervisor else None,
                activity=runtime.activity,
            )
            runtime.engine = AnswerEngine(runtime.retriever, client, settings.bot)
            runtime.flow = AnswerFlow(runtime.engine, runtime.answers, runtime.metrics)
            try:
                yield runtime
            finally:
                await client.aclose()
        finally:
            if not warm_up.done():
                await asyncio.gather(warm_up, return_exceptions=True)  # its thread cannot be stopped; let it finish
            if runtime.supervisor is not None:
                await runtime.supervisor.stop()
            await runtime.server.stop()
