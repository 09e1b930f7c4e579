"""rag.chroma_url: indexing, search and answers against a real Chroma server (`chroma run`)."""

from __future__ import annotations

import subprocess
from contextlib import aclosing
from pathlib import Path

from bot.core import AnswerDone, AnswerEngine
from bot.runtime import knowledge_runtime
from config.settings import BotSettings, Settings
from inference.client import Endpoint
from tests.conftest import client_for, closed_port, make_settings
from tests.proc import TEAMBOT_CMD, process_env
from tests.test_indexer import assert_consistent

ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"


def server_settings(tmp_path: Path, knowledge: Path, url: str, name: str = "data") -> Settings:
    return make_settings(tmp_path / name, knowledge, rag={"chroma_url": url})


def test_incremental_indexing_and_search_on_a_chroma_server(chroma_server: str, tmp_path: Path, knowledge: Path) -> None:
    settings = server_settings(tmp_path, knowledge, chroma_server)
    with knowledge_runtime(settings) as runtime:
        first = runtime.indexer.run()
        assert first.added == 7 and not first.failed
        assert runtime.store.location == f"the Chroma server at {chroma_server}"
        assert_consistent(runtime)
        (knowledge / "faq.txt").write_text("Parking is free on weekends.\n")
        (knowledge / "onboarding.html").unlink()
        second = runtime.indexer.run()
        assert (second.updated, second.deleted, second.unchanged, second.chunks) == (1, 1, 5, 1)
        assert_consistent(runtime)
        found = runtime.retriever.search(ON_CALL_QUESTION, ["default"])
        assert found.passages and found.passages[0].path == "oncall-guide.md"
    assert not (settings.data_dir / "chroma").exists()  # the embedded store was never used


async def test_answers_from_a_chroma_server(chroma_server: str, tmp_path: Path, knowledge: Path, llamacpp_endpoint: Endpoint) -> None:
    settings = server_settings(tmp_path, knowledge, chroma_server, name="answers")
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run([knowledge], "answers")
        engine = AnswerEngine(runtime.retriever, client_for(llamacpp_endpoint), BotSettings())
        async with aclosing(engine.answer(ON_CALL_QUESTION, collections=["answers"])) as events:
            done = [e async for e in events if isinstance(e, AnswerDone)][0]
    assert done.found and done.answer.strip() and done.sources[0].path == "oncall-guide.md"


def test_a_chroma_server_that_is_down_is_a_clear_error(tmp_path: Path, knowledge: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    settings = server_settings(tmp_path, knowledge, url)
    result = subprocess.run([*TEAMBOT_CMD, "index"], env=process_env(settings, TEAMBOT_RAG__CHROMA_URL=url), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"cannot reach the Chroma server at {url}" in result.stderr and "chroma run --path" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_chroma_url_is_refused_at_start(tmp_path: Path, knowledge: Path) -> None:
    settings = make_settings(tmp_path / "data", knowledge)
    result = subprocess.run([*TEAMBOT_CMD, "config"], env=process_env(settings, TEAMBOT_RAG__CHROMA_URL="chroma:8000"), capture_output=True, text=True)
    assert result.returncode == 2 and "setting 'rag.chroma_url' = 'chroma:8000' is not allowed" in result.stderr
