"""The `teambot` command as users and scripts run it: real processes, real model, real store."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bot.prompt import language_of
from config.settings import Settings
from inference.client import Endpoint
from tests.conftest import closed_port

TEAMBOT = str(Path(sys.executable).parent / "teambot")
ON_CALL_QUESTION = "Who gets paged if the primary on-call does not acknowledge a page?"


def teambot_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAMBOT_")}
    env.update(
        TEAMBOT_DATA_DIR=str(settings.data_dir),
        TEAMBOT_RAG__KNOWLEDGE_DIR=str(settings.rag.knowledge_dir),
        TEAMBOT_INFERENCE__CONTEXT_SIZE="2048",
        TEAMBOT_HTTP_PORT="0",
        **extra,
    )
    return env


def run(args: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TEAMBOT, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def external(endpoint: Endpoint) -> dict[str, str]:
    return {"TEAMBOT_INFERENCE__BACKEND": "external", "TEAMBOT_INFERENCE__BASE_URL": endpoint.base_url}


def test_index_then_search_json(settings: Settings) -> None:
    env = teambot_env(settings)
    indexed = run(["index", "--json"], env)
    assert indexed.returncode == 0, indexed.stderr
    report = json.loads(indexed.stdout)
    assert {"added", "updated", "deleted", "unchanged", "failed", "chunks", "seconds"} <= report.keys()
    assert report["added"] == 7 and report["failed"] == [] and report["chunks"] > 7

    again = json.loads(run(["index", "--json"], env).stdout)
    assert again["unchanged"] == 7 and again["chunks"] == 0

    found = run(["search", "出差住宿每晚可以报销多少钱？", "--json", "--top-k", "2"], env)
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert len(result["sources"]) <= 2 and {"embed", "total"} <= result["timings_ms"].keys()
    best = result["sources"][0]
    assert {"path", "title", "score", "text"} <= best.keys()
    assert best["path"] == "expense-policy-zh.md"  # relative to the indexed folder
    assert best["title"] == "差旅与报销政策" and "600 元" in best["text"]


def test_index_reports_a_corrupt_file_and_goes_on(settings: Settings) -> None:
    (settings.rag.knowledge_dir / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    result = run(["index"], teambot_env(settings))
    assert result.returncode == 0
    assert "7 added" in result.stdout and "1 failed" in result.stdout
    assert "broken.pdf" in result.stdout and "not a readable PDF" in result.stdout


def test_ask_json_end_to_end_on_the_embedded_llm(indexed_settings: Settings) -> None:
    """The embedded default: teambot starts llama.cpp with SmolLM2 itself, answers, and stops it."""
    result = run(["ask", ON_CALL_QUESTION, "--json"], teambot_env(indexed_settings))
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["answer"].strip() and answer["found"] is True
    assert "oncall-guide.md" in [s["path"] for s in answer["sources"]]
    assert {"retrieve", "first_token", "total"} <= answer["timings_ms"].keys()
    assert "ready in" in result.stderr  # the model start was shown


def test_ask_streams_text_then_sources(indexed_settings: Settings, llamacpp_endpoint: Endpoint) -> None:
    result = run(["ask", ON_CALL_QUESTION], teambot_env(indexed_settings, **external(llamacpp_endpoint)))
    assert result.returncode == 0, result.stderr
    answer, _, sources = result.stdout.partition("\nSources\n")
    assert answer.strip()
    assert re.search(r"\[1\] On-call guide \(oncall-guide\.md, Paging and escalation\)\s+score 0\.\d\d", sources)


def test_ask_with_nothing_relevant_says_so(indexed_settings: Settings) -> None:
    env = teambot_env(indexed_settings, **external(Endpoint(f"http://127.0.0.1:{closed_port()}/v1")))
    result = run(["ask", "What is the boiling point of tungsten?", "--json"], env)
    assert result.returncode == 0, result.stderr  # no LLM call was needed, so the dead server does not matter
    answer = json.loads(result.stdout)
    assert "don't know" in answer["answer"] and answer["sources"] == [] and answer["found"] is False


def test_ask_with_the_llm_server_down_fails_clearly(indexed_settings: Settings) -> None:
    port = closed_port()
    env = teambot_env(indexed_settings, **external(Endpoint(f"http://127.0.0.1:{port}/v1")), TEAMBOT_INFERENCE__MAX_RETRIES="1")
    # In auto mode the quotes are there already: the user gets them, and the reason says the model failed.
    quoted = json.loads(run(["ask", ON_CALL_QUESTION, "--json"], env).stdout)
    assert quoted["mode"] == "extractive" and "secondary on-call engineer" in quoted["answer"]
    assert quoted["reason"].startswith(f"the model's answer was replaced: the model failed: the LLM server at http://127.0.0.1:{port}/v1 is not reachable")
    # In generative mode the model's answer is the answer: its failure is the user's to read.
    result = run(["ask", ON_CALL_QUESTION], {**env, "TEAMBOT_BOT__ANSWER_MODE": "generative"})
    assert result.returncode == 1
    assert f"the LLM server at http://127.0.0.1:{port}/v1 is not reachable" in result.stderr
    assert "inference.base_url" in result.stderr  # the hint says what to fix
    assert "Traceback" not in result.stderr + result.stdout


def test_chat_keeps_the_conversation_and_shows_sources(indexed_settings: Settings, llamacpp_endpoint: Endpoint) -> None:
    stdin = f"{ON_CALL_QUESTION}\n/clear\nWhat is the boiling point of tungsten?\n/exit\n"
    result = run(["chat"], teambot_env(indexed_settings, **external(llamacpp_endpoint)), stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("teambot> ") == 2
    assert "[1] On-call guide (oncall-guide.md" in result.stdout
    assert "I don't know" in result.stdout
    assert "conversation cleared" in result.stderr


def test_serve_runs_until_sigterm_and_stops_its_llm_server(indexed_settings: Settings) -> None:
    process = subprocess.Popen(
        [TEAMBOT, "serve"], env=teambot_env(indexed_settings, TEAMBOT_BOT__REWRITE_QUESTION="true"), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = _read_until(process, "waiting for SIGTERM", timeout_s=180)
        assert "No chat platform is configured" in banner and "SLACK_BOT_TOKEN" in banner
        said = " ".join(banner.split())  # as the terminal wraps it
        assert said.count("SmolLM2-135M, is too small for grounded answers") == 1, banner  # once, at start
        assert said.count("bot.rewrite_question is on, but SmolLM2-135M writes no usable search queries") == 1, banner
        assert "teambot models pull internlm2_5-1_8b-chat-q4_k_m" in said and "inference.model_path" in said
        assert "too small for grounded answers" in (indexed_settings.logs_dir / "teambot.log").read_text()
        url = re.search(r"API at (http://127\.0\.0\.1:(\d+)/v1)", banner)
        assert url, banner
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    with pytest.raises(OSError):  # the llama.cpp server went with it
        socket.create_connection(("127.0.0.1", int(url.group(2))), timeout=1).close()


def _read_until(process: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """Collects stderr (on a reader thread) until ``marker`` appears, polling with a deadline."""
    assert process.stderr is not None
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    while marker not in "".join(lines):
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(f"no {marker!r} from teambot serve; stderr so far:\n{''.join(lines)}")
        time.sleep(0.05)
    return "".join(lines)


def test_the_readmes_two_questions_in_one_chat_get_right_cited_answers(indexed_settings: Settings, llamacpp_endpoint: Endpoint) -> None:
    """The README's example: the on-call question, then the Chinese hotel question, in one conversation."""
    stdin = "Who gets paged if the primary on-call does not acknowledge?\n出差住宿每晚可以报销多少钱？\n/exit\n"
    result = run(["chat"], teambot_env(indexed_settings, **external(llamacpp_endpoint)), stdin=stdin, timeout=600)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("teambot> ")[1:3]
    first_answer, first_sources = first.split("\nSources\n")
    assert "secondary on-call engineer" in first_answer and "15 minutes" in first_answer and "[1]" in first_answer
    assert "*[1] On-call guide (oncall-guide.md" in first_sources
    second_answer, second_sources = second.split("\nSources\n")
    assert "600" in second_answer and "[1]" in second_answer and language_of(second_answer) == "zh"
    assert "*[1] 差旅与报销政策 (expense-policy-zh.md" in second_sources
    assert "on-call" not in second_answer.lower()  # the earlier topic does not leak into the answer
