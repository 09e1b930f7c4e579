"""The OpenAI-compatible client against a local fake server: retries, errors, model discovery."""

from __future__ import annotations

import pytest

from inference.client import ChatMessage, Endpoint, LLMRequestError, LLMUnavailable
from tests.conftest import client_for, closed_port
from tests.fake_llm import MODEL, FakeLLM, Reply

QUESTION = [ChatMessage("user", "hello")]


async def answer(client) -> str:  # type: ignore[no-untyped-def]
    return "".join([token async for token in client.stream_chat(QUESTION)])


async def test_streams_tokens_and_discovers_the_model(fake_llm: FakeLLM) -> None:
    client = client_for(Endpoint(base_url=fake_llm.base_url))
    assert await answer(client) == "Hello from the fake [1]."
    assert fake_llm.requests[0]["model"] == MODEL
    await client.aclose()


async def test_a_stream_that_closes_without_a_finish_reason_is_a_cut_answer_not_a_whole_one(fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Reply(tokens=["If the primary", " does not"], unfinished=True))  # [DONE], no finish_reason
    client = client_for(Endpoint(base_url=fake_llm.base_url, model=MODEL, down_hint="look at the server"))
    seen: list[str] = []
    with pytest.raises(LLMUnavailable, match="ended the answer before it was finished") as caught:
        async for token in client.stream_chat(QUESTION):
            seen.append(token)
    assert seen == ["If the primary", " does not"] and caught.value.hint == "look at the server"
    await client.aclose()


async def test_retries_server_errors_with_backoff(fake_llm: FakeLLM) -> None:
    fake_llm.script.extend([Reply(status=503), Reply(status=502), Reply()])
    client = client_for(Endpoint(base_url=fake_llm.base_url, model=MODEL), max_retries=2)
    assert await answer(client) == "Hello from the fake [1]."
    assert len(fake_llm.requests) == 3
    await client.aclose()


async def test_gives_up_after_the_retries(fake_llm: FakeLLM) -> None:
    fake_llm.script.extend([Reply(status=500)] * 3)
    client = client_for(Endpoint(base_url=fake_llm.base_url, model=MODEL, down_hint="look at the server"), max_retries=2)
    with pytest.raises(LLMUnavailable, match="failed with HTTP 500; tried 3 times") as caught:
        await answer(client)
    assert caught.value.hint == "look at the server"
    await client.aclose()


async def test_a_refused_key_says_which_variable_to_set(fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Reply(status=401))
    client = client_for(Endpoint(base_url=fake_llm.base_url, model=MODEL))
    with pytest.raises(LLMRequestError, match="refused the API key") as caught:
        await answer(client)
    assert "TEAMBOT_LLM_API_KEY" in caught.value.hint
    assert len(fake_llm.requests) == 1  # 4xx is not retried
    await client.aclose()


async def test_server_not_running(fake_llm: FakeLLM) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    client = client_for(Endpoint(base_url=url, model=MODEL), max_retries=1)
    with pytest.raises(LLMUnavailable, match=rf"the LLM server at {url} is not reachable .*tried 2 times"):
        await answer(client)
    await client.aclose()
