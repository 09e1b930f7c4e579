"""What `teambot status` prints: who runs the index, the run in progress, recent runs, and each
collection's documents (rag.operations.desk gathers them). Pure text."""

from __future__ import annotations

import time
from datetime import datetime

from rag.operations.desk import IndexStatus


def render_status(status: IndexStatus) -> str:
    lines = [f"state: {status.state}"]
    service = status.service
    if service and service.alive:
        info = service.info
        next_run = f", next scheduled run {_when(info['next_run_at'])}" if info.get("next_run_at") else ""
        http = f", console at {info['http']}/admin" if info.get("http") else ""
        lines.append(f"index run by teambot serve (pid {info.get('pid', '?')} on {info.get('host', '?')}){next_run}{http}")
    else:
        lines.append("no teambot serve runs the index now (`teambot index` indexes directly)")
    if status.waiting_requests:
        lines.append(f"{status.waiting_requests} re-index request(s) waiting")
    running = status.running
    if running:
        lines.append(
            f"run {running.id} in progress since {_when(running.started_at)} ({running.trigger}): "
            f"{running.files_done}/{running.files_total} files, collection {running.current or '-'}"
        )
    lines.append("")
    lines.append("recent runs:" if status.runs else "no index runs yet")
    for run in status.runs:
        t = run.totals
        took = f"{run.finished_at - run.started_at:.1f} s" if run.finished_at else "running"
        lines.append(
            f"  #{run.id} {_when(run.started_at)} {run.state} ({run.trigger}, {took}): "
            f"{t['added']} added, {t['updated']} updated, {t['deleted']} deleted, {t['unchanged']} unchanged, "
            f"{t['failed']} failed, {t['chunks']} chunks embedded"
        )
        if run.error:
            lines.append(f"      {run.error}")
        for failed in run.failed_collections:
            lines.append(f"      collection {failed.collection}: {failed.error}")
        for report in run.indexed:
            for failure in report.failed[:10]:
                lines.append(f"      failed {report.collection}/{failure['path']}: {failure['error']}")
    lines.append("")
    lines.append("collections:")
    for c in status.collections:
        pending = f", {c.pending} pending" if c.pending else ""
        lines.append(
            f"  {c.collection}: {c.documents} documents, {c.chunks} chunks, {len(c.failed)} failed{pending}"
            f", last indexed {_when(c.last_indexed_at)} ({c.folder or 'no folder'})"
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
