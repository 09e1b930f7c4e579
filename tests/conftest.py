"""Shared fixtures: isolated settings, the sample knowledge base, a real llama.cpp server, a fake LLM."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.core import AnswerEngine
from bot.runtime import knowledge_runtime, open_runtime
from bot.service import Service
from config.settings import SECRET_ENV, BotSettings, Settings, load_settings, with_values
from inference.client import ChatClient, Endpoint
from inference.llamacpp import LlamaCppServer
from tests.fake_llm import FakeLLM

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "knowledge"
TEST_CONFIG = Path(__file__).resolve().parent / "teambot-test.toml"


def pytest_configure(config: pytest.Config) -> None:
    """No test sees the developer's TEAMBOT_* variables or tokens."""
    for name in list(os.environ):
        if name.startswith("TEAMBOT_") or name in SECRET_ENV.values():
            del os.environ[name]


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run in their own directory, where no config/teambot.toml is found."""
    monkeypatch.chdir(tmp_path)


def make_settings(data_dir: Path, knowledge_dir: Path, **overrides: Any) -> Settings:
    rag = {"knowledge_dir": str(knowledge_dir), **overrides.pop("rag", {})}
    return load_settings(TEST_CONFIG, data_dir=str(data_dir), rag=rag, **overrides)


@pytest.fixture
def knowledge(tmp_path: Path) -> Path:
    """A private copy of the sample knowledge base, free to edit."""
    return Path(shutil.copytree(EXAMPLES, tmp_path / "knowledge"))


@pytest.fixture
def settings(tmp_path: Path, knowledge: Path) -> Settings:
    return make_settings(tmp_path / "data", knowledge)


@pytest.fixture(scope="session")
def indexed_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The sample knowledge base indexed once, for tests that only read it."""
    from bot.runtime import knowledge_runtime

    base = tmp_path_factory.mktemp("indexed")
    knowledge = Path(shutil.copytree(EXAMPLES, base / "knowledge"))
    settings = make_settings(base / "data", knowledge)
    with knowledge_runtime(settings) as runtime:
        report = runtime.indexer.run()
    assert report.added == len(list(EXAMPLES.iterdir())) and not report.failed, report
    return settings


@pytest.fixture(scope="session")
async def llamacpp_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[LlamaCppServer, Endpoint]]:
    """The real llama.cpp server with the shipped SmolLM2 model, started once."""
    settings = load_settings(TEST_CONFIG, data_dir=str(tmp_path_factory.mktemp("llm")))
    server = LlamaCppServer(settings.inference, log_dir=settings.logs_dir)
    endpoint = await server.start()
    yield server, endpoint
    await server.stop()


@pytest.fixture(scope="session")
def llamacpp_endpoint(llamacpp_server: tuple[LlamaCppServer, Endpoint]) -> Endpoint:
    return llamacpp_server[1]


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


def client_for(endpoint: Endpoint, **overrides: Any) -> ChatClient:
    options: dict[str, Any] = {"timeout_s": 60, "max_retries": 2, "temperature": 0.0, "max_tokens": 64} | overrides
    return ChatClient(endpoint, **options)


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Chroma server (`chroma run`) on 127.0.0.1; yields its URL.

    One per test (it starts in a second or two): tests that share a server would share its collections."""
    from tests.proc import start_chroma

    with (tmp_path_factory.mktemp("chroma-server") / "chroma.log").open("w") as log:
        process, url = start_chroma(tmp_path_factory.mktemp("chroma-data"), log)
        try:
            yield url
        finally:
            process.terminate()
            process.wait(30)


def indexed_copy(indexed: Settings, tmp_path: Path) -> tuple[Path, Path]:
    """A private data dir holding the indexed sample knowledge base (read only: the knowledge folder is shared)."""
    data = Path(shutil.copytree(indexed.data_dir, tmp_path / "data"))
    (data / "answers.sqlite").unlink(missing_ok=True)
    return data, indexed.rag.knowledge_dir


@asynccontextmanager
async def teambot(settings: Settings) -> AsyncIterator[Service]:
    """`teambot serve` in this process: the LLM server, the platforms and the HTTP server, stopped at exit."""
    async with open_runtime(settings, with_llm=True, serving=True) as runtime:
        service = Service(runtime)
        await service.start()
        try:
            yield service
        finally:
            await service.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server (tests/postgres.py) on 127.0.0.1, started once; yields its `postgres` database's URL."""
    from tests.postgres import running_server

    with running_server() as url:
        yield url


@pytest.fixture
def state_url(postgres_server: str) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server, one per test."""
    from tests.postgres import create_database

    return create_database(postgres_server)


@pytest.fixture
async def make_engine(indexed_settings: Settings) -> AsyncIterator[Any]:
    """AnswerEngines over the indexed sample knowledge base: ``make(endpoint, values, **bot)``, with
    settings ``values`` as a --set-value gives them ({"rag.model_floor": "0.2"}) and BotSettings ``bot``."""
    clients = []
    with ExitStack() as runtimes:

        def make(endpoint: Endpoint, values: dict[str, str] | None = None, **bot: Any) -> AnswerEngine:
            runtime = runtimes.enter_context(knowledge_runtime(with_values(indexed_settings, values or {})))
            client = client_for(endpoint, max_retries=0)
            clients.append(client)
            return AnswerEngine(runtime.retriever, client, BotSettings(**bot))

        yield make
        for client in clients:
            await client.aclose()


def fake_endpoint(fake: FakeLLM) -> Endpoint:
    return Endpoint(base_url=fake.base_url, model="fake-model")
