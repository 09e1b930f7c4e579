"""What the admin console checks before a request reaches its handler: the Host it was sent to
(against DNS rebinding), the Origin of a state-changing request and its Content-Type (against
cross-site requests, which SameSite cookies alone do not stop), and how often one address may
try to sign in (a token bucket, so that parallel guesses are refused, not just slowed), counted per
client address: the connecting one, or X-Forwarded-For's only from a proxy in console.trusted_proxies
(anyone else could name a new address in every guess)."""

from __future__ import annotations

import ipaddress
import math
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from config.errors import ConfigError
from config.settings import MIN_ADMIN_TOKEN_CHARS, SECRET_ENV, Settings

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIGN_IN_BURST = 5  # sign-in attempts one address may make at once ...
SIGN_IN_REFILL_S = 2.0  # ... then one more every this many seconds
THROTTLED_ADDRESSES_MAX = 10_000  # addresses remembered; full buckets are forgotten first


class Refused(Exception):
    """A request the console will not handle: the status and the reason to answer with."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s


def check_admin_token(settings: Settings) -> bytes:
    """The admin token, refused at start when it is too short to stand up to guessing."""
    assert settings.admin_token is not None
    token = settings.admin_token.get_secret_value()
    if len(token.strip()) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(
            f"{SECRET_ENV['admin_token']} is {len(token.strip())} characters long; the admin console needs at least {MIN_ADMIN_TOKEN_CHARS}",
            f"set {SECRET_ENV['admin_token']} to a long random string, e.g. the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    return token.encode()


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The host names the console answers to: local names, this machine's, the listening host and console.allowed_hosts."""
    listening = settings.console.host if settings.console.port is not None else settings.http_host
    names = {*LOCAL_HOSTS, socket.gethostname().lower(), *settings.console.allowed_hosts}
    if listening.lower() not in WILDCARD_HOSTS:
        names.add(listening.lower().strip("[]"))
    return frozenset(names)


@dataclass(frozen=True)
class RequestCheck:
    """Host, Origin and Content-Type rules for console requests."""

    hosts: frozenset[str]

    def check(self, request: Request, content_type: str | None) -> None:
        """Raises Refused unless ``request`` came to an allowed Host, from the console's own origin
        when it changes state, with ``content_type`` (when given) as its body's media type."""
        host = request.headers.get("host", "")
        name = _host_name(host)
        if "*" not in self.hosts and name not in self.hosts:
            raise Refused(
                403, f"this console does not answer to the host name {name or '(none)'!r}: add it to console.allowed_hosts if it is yours"
            )
        if request.method not in STATE_CHANGING:
            return
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            raise Refused(403, "cross-site request refused: the console only accepts changes sent from its own pages")
        if content_type is not None:
            sent = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if sent != content_type:
                raise Refused(415, f"send this request as {content_type}")


def _host_name(host: str) -> str:
    try:
        return (urlsplit(f"//{host}").hostname or "").lower()
    except ValueError:  # a malformed port or IPv6 literal
        return ""


@dataclass(frozen=True)
class ClientAddress:
    """Where a request comes from: the connecting address, or, when that is one of the trusted
    proxies, the last address in X-Forwarded-For that is not (proxies append what connected to them)."""

    proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def trusting(cls, settings: Settings) -> ClientAddress:
        return cls(tuple(ipaddress.ip_network(p, strict=False) for p in settings.console.trusted_proxies))

    def of(self, request: Request) -> str:
        peer = request.client.host if request.client else "?"
        if not self._trusted(peer):
            return peer
        forwarded = [a.strip() for v in request.headers.getlist("x-forwarded-for") for a in v.split(",") if a.strip()]
        for address in reversed(forwarded):
            if not self._trusted(address):
                return address
        return forwarded[0] if forwarded else peer

    def scheme(self, request: Request) -> str:
        """http or https as the browser sees it: X-Forwarded-Proto's from a trusted proxy (one that ends TLS), else the connection's."""
        peer = request.client.host if request.client else "?"
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
        return forwarded if self._trusted(peer) and forwarded in ("http", "https") else request.url.scheme

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)


class SignInThrottle:
    """A token bucket per client address: SIGN_IN_BURST attempts at once, then one every
    SIGN_IN_REFILL_S. An attempt takes its token before anything else is read, so parallel
    guesses past the burst are refused at once; a right token refills the address's bucket."""

    def __init__(self, burst: int = SIGN_IN_BURST, refill_s: float = SIGN_IN_REFILL_S) -> None:
        self._burst, self._refill_s = burst, refill_s
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when counted)

    def take(self, address: str) -> None:
        """Takes one attempt for ``address``; raises Refused (429, with the wait) when none is left."""
        now = time.monotonic()
        tokens = self._tokens(address, now)
        if tokens < 1:
            wait = (1 - tokens) * self._refill_s
            raise Refused(429, f"too many sign-in attempts from this address: try again in {math.ceil(wait)} s", retry_after_s=wait)
        self._buckets[address] = (tokens - 1, now)
        if len(self._buckets) > THROTTLED_ADDRESSES_MAX:
            self._forget_full(now)

    def succeeded(self, address: str) -> None:
        self._buckets.pop(address, None)

    def _tokens(self, address: str, now: float) -> float:
        tokens, counted = self._buckets.get(address, (self._burst, now))
        return min(self._burst, tokens + (now - counted) / self._refill_s)

    def _forget_full(self, now: float) -> None:
        self._buckets = {a: b for a, b in self._buckets.items() if self._tokens(a, now) < self._burst}
