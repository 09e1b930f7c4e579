"""Hostile knowledge files, before and after the parse limits: a .docx zip bomb and a 100,000-page PDF.

    .venv/bin/python -m bench.hostile_files --before /path/to/old/checkout [--part-mb 1024] [--pages 100000]

1. Peak memory of `python -m bot index FOLDER` (a new process, as a cron job or `teambot index`
   runs it; the embedder's load included) on a folder holding a 1 MB .docx whose document refers
   to a 1 GiB part, beside one ordinary Markdown file so that both trees embed something. The
   peak is the process's maximum resident set (os.wait4), which includes its reaped children:
   the parser worker counts.
2. Time to read the 100,000-page PDF (16 MB): before, rag.ingest.documents.read_document in a
   new process; after, the way the indexer and uploads read it (rag.ingest.isolation, worker
   start included), which refuses it at rag.max_pdf_pages from its page count.

Each tree runs from its own checkout (PYTHONPATH); the inputs are written to a temporary folder
at run time. Writes bench/results/hostile-files.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import EMPTY_CONFIG, save
from tests.conftest import EXAMPLES
from tests.hostile_files import docx_bomb, many_page_pdf

REPO = Path(__file__).resolve().parent.parent

READ_BEFORE = """
import json, sys, time
from pathlib import Path
from rag.ingest.documents import read_document
started = time.perf_counter()
try:
    doc = read_document(Path(sys.argv[1])); outcome = f"read: {len(doc.parts)} pages"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "outcome": outcome}))
"""

READ_AFTER = """
import json, sys, time
from pathlib import Path
from config.settings import load_settings
from rag.ingest.isolation import DocumentReader
reader = DocumentReader.of(load_settings(None))
started = time.perf_counter()
try:
    doc = reader.read(Path(sys.argv[1])); outcome = f"read: {len(doc.parts)} pages"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "outcome": outcome}))
reader.close()
"""


def measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, int, float]:
    """Exit code, stdout, peak RSS in MB (the process and its reaped children) and seconds. ``cwd``
    outside any checkout: `python -m` and `-c` put the working directory first on the path."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        return process.returncode, out.read().decode(), usage.ru_maxrss // 1024, round(seconds, 1)


def tree_env(tree: Path, work: Path, knowledge: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAMBOT_")}
    return {**env, "PYTHONPATH": str(tree), "TEAMBOT_CONFIG": str(EMPTY_CONFIG), "TEAMBOT_DATA_DIR": str(work / "data"),
            "TEAMBOT_RAG__KNOWLEDGE_DIR": str(knowledge)}  # fmt: skip


def index_bomb(tree: Path, bomb: Path, work: Path) -> dict[str, object]:
    knowledge = work / "knowledge"
    knowledge.mkdir(parents=True)
    shutil.copy(bomb, knowledge / bomb.name)
    shutil.copy(EXAMPLES / "oncall-guide.md", knowledge / "oncall-guide.md")
    code, out, peak_mb, seconds = measured([sys.executable, "-m", "bot", "index", "--json"], tree_env(tree, work, knowledge), work)
    report = json.loads(out) if code == 0 and out.strip() else {}
    return {"exit_code": code, "peak_rss_mb": peak_mb, "seconds": seconds, "added": report.get("added"),
            "failed": [f["error"].splitlines()[0] for f in report.get("failed", [])]}  # fmt: skip


def read_pdf(tree: Path, script: str, pdf: Path, work: Path) -> dict[str, object]:
    work.mkdir(parents=True, exist_ok=True)
    code, out, peak_mb, seconds = measured([sys.executable, "-c", script, str(pdf)], tree_env(tree, work, work), work)
    result = json.loads(out.strip().splitlines()[-1]) if code == 0 else {"outcome": f"exit code {code}"}
    return {**result, "peak_rss_mb": peak_mb, "process_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of teambot before the limits")
    parser.add_argument("--part-mb", type=int, default=1024, help="size of the .docx's hidden part")
    parser.add_argument("--pages", type=int, default=100_000)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": REPO}
    with tempfile.TemporaryDirectory(prefix="teambot-hostile-") as tmp:
        work = Path(tmp)
        bomb = docx_bomb(work / "bomb.docx", args.part_mb)
        pdf = many_page_pdf(work / "manual.pdf", args.pages)
        inputs = {"docx_bytes": bomb.stat().st_size, "docx_part_mb": args.part_mb, "pdf_bytes": pdf.stat().st_size, "pdf_pages": args.pages}
        print(f"inputs: {inputs}", flush=True)
        results: dict[str, dict[str, object]] = {}
        for name, tree in trees.items():
            results[name] = {
                "index_docx_bomb": index_bomb(tree, bomb, work / name / "bomb"),
                "read_pdf": read_pdf(tree, READ_BEFORE if name == "before" else READ_AFTER, pdf, work / name),
            }
            print(f"{name}: {json.dumps(results[name], ensure_ascii=False)}", flush=True)
    path = save("hostile-files", {"inputs": inputs, **results, "commands": {
        "index": "python -m bot index --json (a folder of the .docx bomb and oncall-guide.md; peak RSS from os.wait4, worker included)",
        "read_pdf": "before: read_document(path); after: DocumentReader.of(default settings).read(path), worker start included",
    }})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
