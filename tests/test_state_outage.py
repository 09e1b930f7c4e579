"""PostgreSQL unavailable under a running service (state_url): the database refuses every
connection and drops the open ones. The service stays up: /healthz says the state failed while
the LLM and Chroma are fine, requests that need the state get a clear 503, and when the
database is back everything works again, the console session included."""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg
from psycopg import sql

from config.settings import Settings
from tests.conftest import indexed_copy
from tests.fake_llm import FakeLLM
from tests.proc import async_wait_for
from tests.test_console import ON_CALL_QUESTION, ask, console_settings, serving, sign_in


def set_available(server_url: str, state_url: str, available: bool) -> None:
    """Lets the state database take connections, or refuses them and ends the open ones."""
    name = state_url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(sql.Identifier(name), sql.SQL("true" if available else "false")))
        if not available:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


async def health(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/healthz")


async def test_the_service_stays_up_while_postgresql_is_away(
    indexed_settings: Settings, fake_llm: FakeLLM, postgres_server: str, state_url: str, tmp_path: object
) -> None:
    data, knowledge = indexed_copy(indexed_settings, tmp_path)  # type: ignore[arg-type]
    settings = console_settings(data, knowledge, fake_llm.base_url, state_url=state_url)
    async with serving(settings) as (service, client):
        await async_wait_for(lambda: (r := service.scheduler.history.recent(1)) and r[0].state == "done", "the first index run", timeout=300)
        await sign_in(client)
        _, done = await ask(client, ON_CALL_QUESTION)
        assert done["found"]

        set_available(postgres_server, state_url, False)
        try:
            away = await health(client)
            assert away.status_code == 503
            checks = away.json()["checks"]
            assert not checks["state"]["ok"] and checks["state"]["detail"] == "the postgresql state failed: see teambot.log"
            assert checks["llm"]["ok"] and checks["chroma"]["ok"]
            refused = await client.get("/admin/api/documents")
            assert refused.status_code == 503 and "PostgreSQL at 127.0.0.1" in refused.json()["error"]
            assert "state_url" in refused.json()["error"]
        finally:
            set_available(postgres_server, state_url, True)

        deadline = time.monotonic() + 120
        while (await health(client)).status_code != 200:  # the next request reconnects
            assert time.monotonic() < deadline, "/healthz did not become 200 again"
            await asyncio.sleep(0.1)
        _, done = await ask(client, ON_CALL_QUESTION)  # the session made before the outage is still valid
        assert done["found"]
