"""The answer log's retention: the real SQLite file, answers aged by rewriting their time."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bot.answer_log import DAY_S, AnswerLog
from bot.core import AnswerDone
from bot.runtime import knowledge_runtime
from config.settings import Settings, with_values

DONE = AnswerDone("In the basement [1].", [], [1], True)


def age(path: Path, answer_id: str, days: float) -> None:
    """Makes an answer ``days`` old, from another connection (as if written back then)."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE answers SET created_at = ? WHERE id = ?", (time.time() - days * DAY_S, answer_id))


def ids(path: Path) -> tuple[set[str], set[str]]:
    """The answers' ids and the ids the votes refer to."""
    with sqlite3.connect(path) as db:
        answers = {row[0] for row in db.execute("SELECT id FROM answers")}
        votes = {row[0] for row in db.execute("SELECT answer_id FROM votes")}
    return answers, votes


def test_answers_past_the_retention_go_at_start_with_their_votes(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    log = AnswerLog(path)  # retention 0: a reader keeps everything
    old, recent = (log.record("slack", "C1", "1.0", "U1", "Where is the bike room?", DONE) for _ in range(2))
    log.vote(old, "U2", "down")
    log.vote(recent, "U2", "up")
    log.close()
    age(path, old, 91)
    age(path, recent, 89)

    AnswerLog(path).close()
    assert ids(path) == ({old, recent}, {old, recent})  # 0 keeps answers forever
    AnswerLog(path, retention_days=90).close()
    assert ids(path) == ({recent}, {recent})


def test_a_running_log_prunes_when_it_writes(tmp_path: Path) -> None:
    path = tmp_path / "answers.sqlite"
    log = AnswerLog(path, retention_days=30)
    try:
        first = log.record("discord", "C2", "", "U1", "Who approves hotfixes?", DONE)
        log.vote(first, "U1", "up")
        age(path, first, 31)  # a month passes while teambot runs
        second = log.record("discord", "C2", "", "U1", "And on weekends?", DONE)
        assert ids(path) == ({second}, set())
        assert [a.id for a in log.recent()] == [second]
    finally:
        log.close()


def test_the_setting_reaches_the_served_log(settings: Settings) -> None:
    configured = with_values(settings, {"bot.answer_retention_days": "7"})
    with knowledge_runtime(configured, serving=True) as runtime:
        assert runtime.answers is not None
        old = runtime.answers.record("slack", "C1", "1.0", "U1", "Where is the bike room?", DONE)
        age(runtime.answers.db.path, old, 8)  # type: ignore[attr-defined]
        assert runtime.answers.prune() == 1
