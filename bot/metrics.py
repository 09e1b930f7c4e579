"""Prometheus metrics of one teambot process, served at /metrics.

Questions by platform, answer latency and time to first token, questions for which retrieval
found nothing relevant, answer errors, index runs (by how they ended), files that failed to
index, chunks embedded, uploads; and, read from the manifest at each scrape, the documents and
chunks of every collection. Its own registry, so several services in one process (the tests)
stay apart. No label ever carries user text.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.core import AnswerDone
from rag.operations.run_history import Run
from rag.store.manifest import Manifest

# Seconds: a CPU LLM answers in seconds to minutes; a GPU server in well under a second.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, manifest: Manifest | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.questions = Counter("teambot_questions", "Questions answered, by platform", ["platform"], registry=r)
        self.answer_seconds = Histogram("teambot_answer_seconds", "Time from question to complete answer", ["platform"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token_seconds = Histogram(
            "teambot_first_token_seconds", "Time from question to the answer's first text", ["platform"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.nothing_relevant = Counter("teambot_retrieval_nothing_relevant", "Questions for which no passage passed the relevance decision (rag.relevance or rag.min_score)", ["platform"], registry=r)
        self.answer_errors = Counter("teambot_answer_errors", "Questions that ended in an error, by error type", ["platform", "error"], registry=r)
        self.index_runs = Counter("teambot_index_runs", "Index runs of the scheduler, by how they ended", ["state"], registry=r)
        self.index_run_seconds = Histogram("teambot_index_run_seconds", "Duration of index runs", buckets=(1, 5, 10, 30, 60, 300, 900, 3600), registry=r)
        self.index_failures = Counter("teambot_index_file_failures", "Files an index run could not index (counted at every run)", registry=r)
        self.chunks_embedded = Counter("teambot_index_chunks_embedded", "Chunks embedded and written by index runs", registry=r)
        self.uploads = Counter("teambot_uploads", "Files uploaded by admins, by outcome", ["outcome"], registry=r)
        if manifest is not None:
            r.register(_ManifestCollector(manifest))

    def observe_answer(self, platform: str, done: AnswerDone) -> None:
        self.questions.labels(platform).inc()
        self.answer_seconds.labels(platform).observe(done.timings_ms.get("total", 0.0) / 1000)
        self.first_token_seconds.labels(platform).observe(done.timings_ms.get("first_token", 0.0) / 1000)
        if not done.found:
            self.nothing_relevant.labels(platform).inc()

    def observe_error(self, platform: str, error: BaseException) -> None:
        self.answer_errors.labels(platform, type(error).__name__).inc()

    def observe_run(self, run: Run) -> None:
        self.index_runs.labels(run.state).inc()
        if run.finished_at is not None:
            self.index_run_seconds.observe(run.finished_at - run.started_at)
        totals = run.totals
        self.index_failures.inc(totals["failed"] + len(run.failed_collections))
        self.chunks_embedded.inc(totals["chunks"])

    def observe_upload(self, ok: bool) -> None:
        self.uploads.labels("added" if ok else "refused").inc()

    def route(self) -> Route:
        async def metrics(request: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return Route("/metrics", metrics, methods=["GET"])


class _ManifestCollector(Collector):
    """Documents and chunks per collection, as the manifest says at scrape time."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        documents = GaugeMetricFamily("teambot_index_documents", "Indexed documents per collection", labels=["collection"])
        chunks = GaugeMetricFamily("teambot_index_chunks", "Chunks in the index per collection", labels=["collection"])
        failing = GaugeMetricFamily("teambot_index_failing_files", "Files that currently fail to index, per collection", labels=["collection"])
        for collection in self._manifest.collections():
            files = self._manifest.files(collection).values()
            documents.add_metric([collection], sum(f.state == "indexed" for f in files))
            chunks.add_metric([collection], sum(f.chunks for f in files))
            failing.add_metric([collection], sum(f.state == "failed" for f in files))
        yield from (documents, chunks, failing)
