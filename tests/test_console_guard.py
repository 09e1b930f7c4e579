"""Which address and scheme the console takes a request to come from (bot/console_guard.py): the
connection's, unless it comes from a proxy listed in console.trusted_proxies."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from bot.console_guard import ClientAddress
from config.settings import Settings
from tests.conftest import make_settings


def request_from(peer: str, headers: dict[str, str]) -> Request:
    scope = {
        "type": "http", "method": "POST", "path": "/admin/api/login", "scheme": "http", "server": ("127.0.0.1", 8080),
        "client": (peer, 50000), "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()], "query_string": b"",
    }  # fmt: skip
    return Request(scope)


FORWARDED = {"X-Forwarded-For": "198.51.100.7, 10.0.0.5", "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize("proxies", [[], ["10.0.0.0/8"]])
def test_forwarded_headers_from_an_untrusted_peer_are_ignored(tmp_path, proxies: list[str]) -> None:
    settings: Settings = make_settings(tmp_path / "data", tmp_path / "knowledge", console={"trusted_proxies": proxies})
    request = request_from("127.0.0.1", FORWARDED)
    assert ClientAddress.trusting(settings).of(request) == "127.0.0.1"
    assert ClientAddress.trusting(settings).scheme(request) == "http"


def test_a_trusted_proxy_names_the_client_and_the_scheme(tmp_path) -> None:
    settings = make_settings(tmp_path / "data", tmp_path / "knowledge", console={"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]})
    request = request_from("127.0.0.1", FORWARDED)
    # proxies append what connected to them: the last address that is not a trusted proxy is the client
    assert ClientAddress.trusting(settings).of(request) == "198.51.100.7"
    assert ClientAddress.trusting(settings).scheme(request) == "https"
    assert ClientAddress.trusting(settings).scheme(request_from("127.0.0.1", {"X-Forwarded-Proto": "gopher"})) == "http"
