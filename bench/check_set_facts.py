"""Check a question set against its corpus, as the set's header says it was checked: every
expect_sources path exists under CORPUS, and every expect_facts string occurs (case-insensitive,
NFKC, whitespace-folded) in EVERY listed source (facts: any = at least one per source).
Sources that are not UTF-8 text (PDF, .docx) are listed, not read.

    python -m bench.check_set_facts examples/eval/lmdeploy-docs.yaml /tmp/lmdeploy-corpus [--prefix ID_PREFIX]
"""

from __future__ import annotations

import argparse
import re
import sys
import unicodedata
from pathlib import Path

from bot.evaluation.questions import load_question_set


def fold(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).casefold()


def problems(set_path: Path, corpus: Path, prefix: str = "") -> tuple[int, list[str], list[str]]:
    """(items checked, problems, sources that are not UTF-8 text and were not read)."""
    out: list[str] = []
    skipped: list[str] = []
    checked = 0
    for item in load_question_set(set_path).items:
        if not item.id.startswith(prefix):
            continue
        checked += 1
        for source in item.expect_sources:
            path = corpus / source
            if not path.is_file():
                out.append(f"{item.id}: {source} does not exist")
                continue
            try:
                page = fold(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:  # a PDF, a .docx: its facts are not checked here
                skipped.append(f"{item.id}: {source}")
                continue
            found = [fact for fact in item.expect_facts if fold(fact) in page]
            if item.facts == "all" and len(found) < len(item.expect_facts):
                out.append(f"{item.id}: {source} lacks {sorted(set(item.expect_facts) - set(found))}")
            elif item.facts == "any" and item.expect_facts and not found:
                out.append(f"{item.id}: {source} has none of {list(item.expect_facts)}")
    return checked, out, skipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", type=Path)
    parser.add_argument("corpus", type=Path, help="the folder the set's expect_sources are relative to")
    parser.add_argument("--prefix", default="", help="check only items whose id starts with this")
    args = parser.parse_args()
    checked, found, skipped = problems(args.set, args.corpus, args.prefix)
    for line in found:
        print(line)
    for line in skipped:
        print(f"not checked (not UTF-8 text): {line}")
    print(f"{checked} items checked, {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
