"""What `teambot status` shows: who runs the index, the run in progress, recent runs, and each
collection's documents. Reads the data dir only (never the Chroma store), so it works beside a
running service. ``index_status`` gathers plain data; ``render_status`` is pure text."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from config.settings import Settings
from rag.lease import current_lease
from rag.manifest import Manifest
from rag.run_history import RunHistory
from rag.scheduler import IndexScheduler


def index_status(settings: Settings, runs: int = 5) -> dict[str, Any]:
    history = RunHistory(settings.data_dir / "index-runs.sqlite")
    manifest = Manifest(settings.data_dir / "index.sqlite")
    try:
        lease = current_lease(history.path)
        collections = []
        for name in sorted(set(settings.collection_dirs()) | set(manifest.collections())):
            files = list(manifest.files(name).values())
            folder = settings.collection_dirs().get(name)
            collections.append(
                {
                    "collection": name,
                    "folder": str(folder) if folder else None,
                    "documents": sum(f.state != "failed" for f in files),
                    "chunks": sum(f.chunks for f in files),
                    "failed": [{"path": f.path, "error": f.error} for f in files if f.state == "failed"],
                    "pending": sum(f.state == "pending" for f in files),
                    "last_indexed_at": max((f.indexed_at for f in files), default=None),
                }
            )
        running = history.running()
        return {
            "service": {"holder": lease.holder, "alive": lease.alive, **lease.info} if lease else None,
            "waiting_requests": len(history.waiting()),
            "running": running.to_json() if running else None,
            "runs": [r.to_json() for r in history.recent(runs)],
            "collections": collections,
        }
    finally:
        history.close()
        manifest.close()


def render_status(status: dict[str, Any]) -> str:
    lines = []
    service = status["service"]
    if service and service["alive"]:
        next_run = f", next scheduled run {_when(service['next_run_at'])}" if service.get("next_run_at") else ""
        http = f", console at {service['http']}/admin" if service.get("http") else ""
        lines.append(f"index run by teambot serve (pid {service.get('pid', '?')} on {service.get('host', '?')}){next_run}{http}")
    else:
        lines.append("no teambot serve runs the index now (`teambot index` indexes directly)")
    if status["waiting_requests"]:
        lines.append(f"{status['waiting_requests']} re-index request(s) waiting")
    running = status["running"]
    if running:
        lines.append(
            f"run {running['id']} in progress since {_when(running['started_at'])} ({running['trigger']}): "
            f"{running['files_done']}/{running['files_total']} files, collection {running['current'] or '-'}"
        )
    lines.append("")
    lines.append("recent runs:" if status["runs"] else "no index runs yet")
    for run in status["runs"]:
        t = run["totals"]
        took = f"{run['finished_at'] - run['started_at']:.1f} s" if run["finished_at"] else "running"
        lines.append(
            f"  #{run['id']} {_when(run['started_at'])} {run['state']} ({run['trigger']}, {took}): "
            f"{t['added']} added, {t['updated']} updated, {t['deleted']} deleted, {t['unchanged']} unchanged, "
            f"{t['failed']} failed, {t['chunks']} chunks embedded"
        )
        if run["error"]:
            lines.append(f"      {run['error']}")
        for report in run["reports"]:
            if "error" in report:
                lines.append(f"      collection {report['collection']}: {report['error']}")
            for failure in report.get("failed", [])[:10]:
                lines.append(f"      failed {report['collection']}/{failure['path']}: {failure['error']}")
    lines.append("")
    lines.append("collections:")
    for c in status["collections"]:
        pending = f", {c['pending']} pending" if c["pending"] else ""
        lines.append(
            f"  {c['collection']}: {c['documents']} documents, {c['chunks']} chunks, {len(c['failed'])} failed{pending}"
            f", last indexed {_when(c['last_indexed_at'])} ({c['folder'] or 'no folder'})"
        )
    return "\n".join(lines)


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    ago = time.time() - timestamp
    stamp = datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
    if ago < 0:
        return f"{stamp} (in {-ago:.0f} s)"
    return stamp


async def request_reindex(scheduler: IndexScheduler, trigger: str) -> str:
    """Queues a re-index for a chat command or the console, and says when it will run."""
    request = await scheduler.request(trigger)
    running = await asyncio.to_thread(scheduler.history.running)
    if running is not None:
        return (
            f"Re-index queued (request {request.id}): it starts when the run in progress ends "
            f"({running.files_done}/{running.files_total} files done)."
        )
    if not scheduler.leader:
        return f"Re-index queued (request {request.id}): another teambot replica runs the index and picks it up within seconds."
    return f"Re-index started (request {request.id}): every collection's folder is checked; only changed files are embedded."
