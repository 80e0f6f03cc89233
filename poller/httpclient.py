"""HTTP plumbing shared by broker adapters: one client per connection, typed errors, deadlines.

httpx's timeouts are per operation (an inactivity timeout), so a server trickling one byte a
second could hold a call for ever; :func:`send` wraps each call in an overall deadline too.
Everything httpx can raise is translated here into :mod:`poller.errors` types.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from poller.__about__ import __version__
from poller.aiohttptransport import AiohttpTransport
from poller.errors import BrokerAnswerTooLarge, BrokerMalformed, BrokerUnavailable

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
#: The longest pause a ``Retry-After`` may ask for (one hour): past it we ask again.
MAX_RETRY_AFTER = 3600.0
_DELAY = re.compile(r"^-?\d{1,12}(?:\.\d{1,6})?$")
LARGE_BODY = 256 * 1024


class BrokerClient(httpx.AsyncClient):
    """The client of a broker connection or notifier that sends over aiohttp
    (:meth:`build_client` with ``fast``): :func:`send` and :func:`poller.notifiers.post` hand
    its requests straight to :attr:`fast_transport`.

    httpx's client layer around a transport (auth, redirects, event hooks, reading every
    answer for cookies, the byte stream's wrapper) cost about as much CPU as aiohttp's own
    send, and a broker connection or notifier needs none of it but the cookie jar: requests
    are signed and redirects refused. Requests are still built by the client (base URL, default
    headers, the jar's cookies, timeouts); an answer that sets a cookie still goes into
    the jar; answers are plain ``httpx.Response``.
    """

    def __init__(self, *, transport: AiohttpTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        #: The transport :func:`send` uses directly.
        self.fast_transport = transport

    @property
    def direct(self) -> bool:
        """Whether :func:`send` may skip the client layer: not once an adapter set an
        ``auth`` (Webull signs in its auth flow) or event hooks, which only it runs."""
        return self.auth is None and not any(self.event_hooks.values())


async def send_streaming(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """``client.send(request, stream=True)``, straight to the transport for a
    :class:`BrokerClient` that allows it (the caller reads and closes the answer).

    :raises httpx.HTTPError: as ``client.send`` raises them.
    """
    if isinstance(client, BrokerClient) and client.direct:
        if client.is_closed:  # as httpx refuses: a closed client opens nothing
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        response = await client.fast_transport.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:  # rare: kept in the jar as httpx would
            client.cookies.extract_cookies(response)
        return response
    return await client.send(request, stream=True)


def build_client(base_url: str, *, timeout: float, headers: dict[str, str] | None = None,
                 connections: int = 4, fast: bool = False) -> httpx.AsyncClient:
    """The one ``httpx.AsyncClient`` of a broker connection or notifier.

    :param connections: how many requests may be on the wire at once. A request the rate
        budget admitted must not then wait for a pooled connection: it would leave late,
        bunched with others, and arrive at the broker compressed into one window.
    :param fast: send over aiohttp (:mod:`poller.aiohttptransport`), about half the CPU per
        request: for broker connections, which poll at their full budget, and notifiers. Not
        when the environment names a proxy: httpx honours ``HTTP_PROXY``, ``HTTPS_PROXY``,
        ``ALL_PROXY`` and ``NO_PROXY`` only with its own transport, and a broker or service
        reachable only through the proxy must stay reachable.
    """
    settings: dict[str, Any] = {
        "base_url": base_url,
        "timeout": httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        "headers": {"User-Agent": f"poller/{__version__}", **(headers or {})},
        "follow_redirects": False,
    }
    if fast and not environment_proxies():
        return BrokerClient(transport=AiohttpTransport(connections=connections), **settings)
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=connections,
                                                 max_keepalive_connections=connections),
                             **settings)


def environment_proxies() -> dict[str, str]:
    """The HTTP proxies the environment names (scheme → proxy URL; empty: none).

    The same reading httpx makes (``urllib.request.getproxies``: ``http``, ``https`` and
    ``all``), so a client built on it honours exactly the proxies httpx would.
    """
    found = urllib.request.getproxies()
    return {scheme: found[scheme] for scheme in ("http", "https", "all") if found.get(scheme)}


@dataclass(frozen=True)
class Answer:
    """A broker's HTTP answer: status, headers and the body parsed as JSON (or ``None``)."""

    status: int
    headers: httpx.Headers
    body: Any
    text: str

    def header(self, name: str) -> str | None:
        """One response header, or ``None``."""
        value: str | None = self.headers.get(name)
        return value


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    connection: str,
    deadline: float,
    expect_json: bool = True,
    max_bytes: int = MAX_BODY_BYTES,
) -> Answer:
    """Send ``request`` and read its whole answer within ``deadline`` seconds.

    JSON numbers with a fraction are parsed as ``Decimal`` and big integers stay exact
    ``int``: a quantity or an order id never passes through float.

    :raises BrokerUnavailable: connection errors, timeouts, deadline exceeded.
    :raises BrokerMalformed: a body that is too big, or not JSON when JSON was expected
        and the status is 2xx (non-JSON error pages come back with ``body=None``).
    """
    try:
        async with asyncio.timeout(deadline):
            response = await send_streaming(client, request)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise BrokerAnswerTooLarge(
                            f"the answer is larger than {max_bytes / 1024 / 1024:g} MiB "
                            f"(raise brokers.{connection}.max_answer_mb if that is expected)",
                            connection=connection,
                        )
                    chunks.append(chunk)
            finally:
                await response.aclose()
    except TimeoutError as err:
        raise BrokerUnavailable(
            f"no complete answer within {deadline:g} s", connection=connection
        ) from err
    except httpx.TimeoutException as err:
        raise BrokerUnavailable(f"timed out ({type(err).__name__})",
                                connection=connection) from err
    except httpx.HTTPError as err:
        raise BrokerUnavailable(f"request failed ({type(err).__name__})",
                                connection=connection) from err
    raw = b"".join(chunks)
    text = raw.decode("utf-8", errors="replace")
    body: Any = None
    if text.strip():
        try:
            if len(raw) > LARGE_BODY:
                # Parsing megabytes takes tens of milliseconds: off the loop, so requests
                # the budget admitted meanwhile leave on time.
                body = await asyncio.to_thread(json.loads, text, parse_float=Decimal)
            else:
                body = json.loads(text, parse_float=Decimal)
        except ValueError as err:
            if expect_json and 200 <= response.status_code < 300:
                raise BrokerMalformed(
                    f"answer is not JSON (HTTP {response.status_code}, "
                    f"{response.headers.get('content-type', 'no content-type')})",
                    connection=connection,
                ) from err
    return Answer(response.status_code, response.headers, body, text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Read a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Only a plain non-negative number counts as delay-seconds (``inf``, ``nan`` and ``1e400``
    are garbage, not "wait for ever"); a past date or a negative number means "now"; the
    result is clamped to :data:`MAX_RETRY_AFTER` so one odd answer cannot park a limit group
    or a delivery for days. Anything unreadable gives ``None`` (the caller's own pause).
    """
    if not value:
        return None
    value = value.strip()
    if _DELAY.match(value):
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    current = time.time() if now is None else now
    return min(MAX_RETRY_AFTER, max(0.0, moment.timestamp() - current))
