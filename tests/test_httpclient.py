"""send() against real servers on loopback: whole answers within a deadline, bounded bodies,
JSON read with Decimal, and every transport failure as a poller error (never an httpx one)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from poller.__about__ import __version__
from poller.aiohttptransport import AiohttpTransport
from poller.errors import BrokerAnswerTooLarge, BrokerMalformed, BrokerUnavailable
from poller.httpclient import (
    LARGE_BODY,
    MAX_BODY_BYTES,
    Answer,
    build_client,
    environment_proxies,
    is_loopback,
    retry_after_seconds,
    send,
)
from poller.simulator.httpserver import SimResponse, SimServer
from tests.rawhttp import RawServer, ok


@pytest.fixture
def server() -> Iterator[SimServer]:
    sim = SimServer("broker")
    sim.start()
    yield sim
    sim.stop()


def fetch(base_url: str, path: str = "/api", *, timeout: float = 5.0, deadline: float = 5.0,
          expect_json: bool = True, headers: dict[str, str] | None = None) -> Answer:
    """One GET through a client built the way every connection builds its own."""
    async def go() -> Answer:
        async with build_client(base_url, timeout=timeout, headers=headers) as client:
            return await send(client, client.build_request("GET", path), connection="tw",
                              deadline=deadline, expect_json=expect_json)

    return asyncio.run(go())


def answer_with(server: SimServer, response: SimResponse, path: str = "/api") -> SimServer:
    server.route("GET", path, lambda request: response)
    return server


@pytest.mark.parametrize("padding", [0, LARGE_BODY], ids=["small", "large-parsed-off-loop"])
def test_json_numbers_never_pass_through_float(server: SimServer, padding: int) -> None:
    raw = (b'{"qty": 0.1, "price": 101.50, "id": 1234567890123456789012, "n": 5, "e": 1e3, '
           b'"pad": "' + b"x" * padding + b'"}')
    answer = fetch(answer_with(server, SimResponse(200, raw=raw)).url)
    body = answer.body
    assert body["qty"] == Decimal("0.1") and isinstance(body["qty"], Decimal)
    assert str(body["price"]) == "101.50"
    assert body["id"] == 1234567890123456789012 and isinstance(body["id"], int)
    assert body["n"] == 5 and isinstance(body["n"], int)
    assert body["e"] == Decimal(1000) and isinstance(body["e"], Decimal)
    assert answer.status == 200 and answer.text == raw.decode()
    assert answer.header("CONTENT-TYPE") == "application/json"
    assert answer.header("x-not-there") is None


@pytest.mark.parametrize(("status", "raw", "content_type"), [
    (502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html"),
    (503, b"Service Unavailable", "text/plain"),
    (404, b"\xff\xfe not utf-8 \xe9", "text/plain"),
    (401, b"", "text/plain"),
])
def test_non_json_error_pages_come_back_without_a_body(
        server: SimServer, status: int, raw: bytes, content_type: str) -> None:
    answer = fetch(answer_with(server, SimResponse(
        status, raw=raw, headers={"Content-Type": content_type})).url)
    assert (answer.status, answer.body) == (status, None)
    assert answer.text == raw.decode("utf-8", errors="replace")


def test_a_2xx_that_is_not_json_is_malformed(server: SimServer) -> None:
    answer_with(server, SimResponse(200, raw=b"<!doctype html><p>maintenance</p>",
                                    headers={"Content-Type": "text/html"}))
    with pytest.raises(BrokerMalformed) as caught:
        fetch(server.url)
    assert str(caught.value) == "answer is not JSON (HTTP 200, text/html)"
    assert caught.value.connection == "tw" and caught.value.category == "malformed"
    # Unless the caller did not ask for JSON: then the text is the answer.
    answer = fetch(server.url, expect_json=False)
    assert answer.body is None and answer.text == "<!doctype html><p>maintenance</p>"


@pytest.mark.parametrize("raw", [b"", b"  \n"], ids=["empty", "whitespace"])
def test_an_empty_2xx_body_is_none_not_an_error(server: SimServer, raw: bytes) -> None:
    answer = fetch(answer_with(server, SimResponse(200, raw=raw)).url)
    assert (answer.status, answer.body) == (200, None)


def test_body_size_limit(server: SimServer) -> None:
    """Exactly the limit is read; one byte more is refused without keeping it."""
    fits = b'"' + b"a" * (MAX_BODY_BYTES - 2) + b'"'
    answer_with(server, SimResponse(200, raw=fits), "/fits")
    answer_with(server, SimResponse(200, raw=fits + b" "), "/too-big")
    assert len(fetch(server.url, "/fits").body) == MAX_BODY_BYTES - 2
    with pytest.raises(BrokerAnswerTooLarge) as caught:
        fetch(server.url, "/too-big")
    assert str(caught.value) == ("the answer is larger than 8 MiB (raise "
                                 "brokers.tw.max_answer_mb if that is expected)")
    assert caught.value.connection == "tw" and isinstance(caught.value, BrokerMalformed)


def test_the_deadline_covers_a_trickling_body(server: SimServer) -> None:
    """Each byte arrives well within the per-operation timeout, but the whole answer would
    take seconds: the overall deadline ends the call."""
    answer_with(server, SimResponse(200, raw=b"[" + b" " * 200 + b"]", trickle=0.05))
    with pytest.raises(BrokerUnavailable) as caught:
        fetch(server.url, timeout=5.0, deadline=0.3)
    assert str(caught.value) == "no complete answer within 0.3 s"
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert caught.value.category == "unavailable" and caught.value.connection == "tw"


def test_an_answer_that_never_starts_times_out(server: SimServer) -> None:
    answer_with(server, SimResponse(200, [], delay=2.0))
    with pytest.raises(BrokerUnavailable, match=r"^timed out \(ReadTimeout\)$") as caught:
        fetch(server.url, timeout=0.2, deadline=10.0)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def hanging_up_server() -> Iterator[str]:
    """A real TCP server that reads the request and closes without answering."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    thread.join(timeout=5)
    listener.close()


def test_connection_refused_is_broker_unavailable(refusing_port: int) -> None:
    with pytest.raises(BrokerUnavailable, match=r"^request failed \(ConnectError\)$") as caught:
        fetch(f"http://127.0.0.1:{refusing_port}")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.connection == "tw"


def test_a_server_hanging_up_is_broker_unavailable(hanging_up_server: str) -> None:
    with pytest.raises(BrokerUnavailable,
                       match=r"^request failed \(RemoteProtocolError\)$") as caught:
        fetch(hanging_up_server)
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)


def test_client_identity_headers_and_no_redirects(server: SimServer) -> None:
    server.route("GET", "/old", lambda r: SimResponse(302, {"moved": True},
                                                       headers={"Location": "/new"}))
    server.route("GET", "/new", lambda r: SimResponse(200, {"ok": True}))
    answer = fetch(server.url, "/old", headers={"X-Api-Key": "k1"})
    assert (answer.status, answer.body, answer.header("location")) == (302, {"moved": True},
                                                                       "/new")
    assert [r.path for r in server.requests()] == ["/old"]  # not followed
    sent = server.requests()[0].headers
    assert sent["user-agent"] == f"poller/{__version__}" and sent["x-api-key"] == "k1"


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True),
    ("LocalHost.", True),
    ("127.0.0.1", True),
    ("127.45.6.7", True),
    ("::1", True),
    ("[::1]", True),
    ("0.0.0.0", False),
    ("10.0.0.1", False),
    ("::", False),
    ("localhost.example.com", False),
    ("api.coinw.com", False),
    ("", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


NOW = 1445412470.0  # ten seconds before Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(("value", "seconds"), [
    ("5", 5.0),
    (" 7 ", 7.0),
    ("1.5", 1.5),
    ("0", 0.0),
    ("-3", 0.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
    ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ("soon", None),
    ("", None),
    (None, None),
    ("inf", None),
    ("Infinity", None),
    ("nan", None),
    ("1e400", None),
    ("999999", 3600.0),
    ("Wed, 21 Oct 2099 07:28:00 GMT", 3600.0),
    ("Wed, 99 Foo 2015 07:28:00 GMT", None),
])
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, now=NOW) == seconds


def test_a_proxy_from_the_environment_carries_broker_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTP_PROXY`` set: a broker client (aiohttp transport) sends through the proxy, as
    httpx does for any client: the proxy sees the absolute URL, the query byte for byte and
    the headers, and its answer comes back as the broker's."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    async def reply(head: bytes, body: bytes) -> bytes:
        return ok(b'{"code": "200", "data": {"n": 12345678901234567890}}')

    async def work(proxy_url: str, proxy: RawServer) -> tuple[Answer, Answer]:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        client = build_client("http://broker.invalid:8080", timeout=5.0, fast=True)
        async with client:
            request = client.build_request("POST", "/api/v1/private?command=x&a=%2F%20")
            first = await send(client, request, connection="c", deadline=5.0)
            second = await send(client, client.build_request("GET", "/again"),
                                connection="c", deadline=5.0)
        return first, second

    async def run() -> tuple[tuple[Answer, Answer], list[tuple[bytes, bytes]]]:
        proxy = RawServer(reply)
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await work(f"http://127.0.0.1:{port}", proxy), proxy.requests
        finally:
            server.close()
            await server.wait_closed()

    (first, second), requests = asyncio.run(run())
    assert first.status == 200 and first.body == {"code": "200",
                                                  "data": {"n": 12345678901234567890}}
    assert second.status == 200
    heads = [head.split(b"\r\n") for head, _ in requests]
    assert heads[0][0] == b"POST http://broker.invalid:8080/api/v1/private?command=x&a=%2F%20 " \
        b"HTTP/1.1"
    assert heads[1][0] == b"GET http://broker.invalid:8080/again HTTP/1.1"
    assert b"Host: broker.invalid:8080" in heads[0]
    assert f"User-Agent: poller/{__version__}".encode() in heads[0]


def test_broker_clients_use_aiohttp_unless_the_environment_names_a_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", "example.com")  # a bypass list alone is no proxy
    assert environment_proxies() == {}
    fast = build_client("https://broker.invalid", timeout=5.0, fast=True)
    plain = build_client("https://broker.invalid", timeout=5.0)
    assert isinstance(fast._transport, AiohttpTransport)
    assert not isinstance(plain._transport, AiohttpTransport)  # notifiers: httpx's own
    monkeypatch.setenv("https_proxy", "proxy.lan:3128")
    assert environment_proxies() == {"https": "proxy.lan:3128"}
    behind = build_client("https://broker.invalid", timeout=5.0, fast=True)
    assert not isinstance(behind._transport, AiohttpTransport)

    async def close() -> None:
        for client in (fast, plain, behind):
            await client.aclose()

    asyncio.run(close())
