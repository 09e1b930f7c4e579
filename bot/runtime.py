"""Builds a running teambot from its settings: store, manifest, retriever, indexer, and (when
asked for) the LLM server, its client and the answer engine. Stops what it started on exit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.core import AnswerEngine
from config.settings import Settings
from inference.client import ChatClient, Endpoint
from inference.server import LLMServer, Progress, make_server
from rag.embedder import embed_model_id
from rag.indexer import Indexer
from rag.library import KnowledgeLibrary
from rag.manifest import Manifest
from rag.retriever import Retriever
from rag.run_history import RunHistory
from rag.store import ChromaStore

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: ChromaStore
    manifest: Manifest
    retriever: Retriever
    indexer: Indexer
    library: KnowledgeLibrary
    history: RunHistory
    server: LLMServer | None = None
    endpoint: Endpoint | None = None
    engine: AnswerEngine | None = None

    def require_engine(self) -> AnswerEngine:
        assert self.engine is not None, "the runtime was opened without the LLM"
        return self.engine

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.manifest.close()
        self.history.close()


def knowledge_runtime(settings: Settings) -> Runtime:
    """The parts that need no LLM: enough for indexing and search. Use it in a ``with`` block."""
    store = ChromaStore(
        settings.data_dir / "chroma", embed_model_id(settings.rag.embed_model), settings.rag.store_timeout_s, url=settings.rag.chroma_url
    )
    manifest = Manifest(settings.data_dir / "index.sqlite")
    indexer = Indexer(settings, store, manifest)
    return Runtime(
        settings=settings,
        store=store,
        manifest=manifest,
        retriever=Retriever(settings.rag, store, manifest, models_dir=settings.models_dir),
        indexer=indexer,
        library=KnowledgeLibrary(settings, indexer, manifest),
        history=RunHistory(settings.data_dir / "index-runs.sqlite"),
    )


@asynccontextmanager
async def open_runtime(settings: Settings, *, with_llm: bool, progress: Progress | None = None) -> AsyncIterator[Runtime]:
    """The runtime; with the LLM, its server is started (while the embedder loads) and stopped at exit."""
    with knowledge_runtime(settings) as runtime:
        if not with_llm:
            yield runtime
            return
        runtime.server = make_server(settings)
        warm_up = asyncio.create_task(asyncio.to_thread(runtime.retriever.warm_up, list(settings.collection_dirs())))
        try:
            runtime.endpoint = await runtime.server.start(progress)
            await warm_up
            inference = settings.inference
            client = ChatClient(
                runtime.endpoint,
                timeout_s=inference.request_timeout_s,
                max_retries=inference.max_retries,
                temperature=inference.temperature,
                max_tokens=inference.max_tokens,
            )
            runtime.engine = AnswerEngine(runtime.retriever, client, settings.bot)
            try:
                yield runtime
            finally:
                await client.aclose()
        finally:
            if not warm_up.done():
                await asyncio.gather(warm_up, return_exceptions=True)  # its thread cannot be stopped; let it finish
            await runtime.server.stop()
