"""The aiohttp transport against raw servers on loopback: the URL goes out exactly as httpx
encoded it, headers and bodies once, connections reused and capped, TLS verified, and every
failure an httpx error whose message carries no part of the URL."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from poller.__about__ import __version__
from poller.aiohttptransport import AiohttpTransport
from poller.errors import BrokerUnavailable, DeliveryUncertain
from poller.httpclient import BrokerClient, build_client, send
from poller.notifiers import post
from tests.rawhttp import RawServer, Reply, ok, serving

CANARY = "sEcReT-cAnArY-77"


async def answer_ok(head: bytes, body: bytes) -> bytes:
    return ok()


def test_the_url_goes_out_exactly_as_httpx_encoded_it() -> None:
    """A signature over the query must see what was signed: no re-quoting of %2F or %3A."""
    params = {"sign": "AB/cd+=", "t": "2025-04-03T18:39:58.000Z", "q": "~A b&é", "e": ""}

    async def work(url: str, raw: RawServer) -> tuple[bytes, bytes]:
        async with build_client(url, timeout=5, fast=True) as client:
            request = client.build_request("GET", "/v1/order/%E4%B8%AD", params=params)
            await send(client, request, connection="cw", deadline=5)
        return request.url.raw_path, raw.requests[0][0].split(b"\r\n")[0]

    sent, line = asyncio.run(serving(answer_ok, work))
    assert b"%2F" in sent and b"%3A" in sent
    assert line == b"GET " + sent + b" HTTP/1.1"  # the request line, byte for byte


def test_headers_and_body_go_once_and_answers_are_decoded_once() -> None:
    payload = b'{"price": "101.50"}'

    async def reply(head: bytes, body: bytes) -> bytes:
        return ok(gzip.compress(b'{"qty": 0.1}'), b"Content-Encoding: gzip\r\n"
                  b"Set-Cookie: s=1; Path=/\r\n")

    async def work(url: str, raw: RawServer) -> tuple[list[Any], RawServer]:
        async with build_client(url, timeout=5, headers={"X-Key": "k"}, fast=True) as client:
            bodies = []
            for _ in range(2):
                request = client.build_request("POST", "/order", content=payload,
                                               headers={"Content-Type": "application/json"})
                bodies.append((await send(client, request, connection="cw",
                                          deadline=5)).body)
            return bodies, raw

    bodies, raw = asyncio.run(serving(reply, work))
    assert [str(b["qty"]) for b in bodies] == ["0.1", "0.1"]
    heads = [head.lower() for head, _ in raw.requests]
    assert [body for _, body in raw.requests] == [payload, payload]
    for head in heads:
        assert head.count(b"content-length:") == 1 and head.count(b"host:") == 1
        assert head.count(b"user-agent: poller/" + __version__.encode()) == 1
        assert b"x-key: k" in head and head.count(b"accept-encoding:") == 1
    assert b"cookie:" not in heads[0]
    assert heads[1].count(b"cookie: s=1") == 1  # httpx's jar, not aiohttp's as well
    assert raw.connections == 1  # kept alive and reused


def test_the_pool_caps_connections_open_at_once() -> None:
    async def slow(head: bytes, body: bytes) -> bytes:
        await asyncio.sleep(0.05)  # stands for network time; the count is what is checked
        return ok()

    async def work(url: str, raw: RawServer) -> int:
        async with build_client(url, timeout=5, connections=2, fast=True) as client:
            await asyncio.gather(*(send(client, client.build_request("GET", "/"),
                                        connection="cw", deadline=5) for _ in range(6)))
        return raw.most_open

    assert asyncio.run(serving(slow, work)) == 2


async def hang(head: bytes, body: bytes) -> bytes | None:
    await asyncio.Event().wait()
    return None


async def cut(head: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\": 1"


async def close(head: bytes, body: bytes) -> None:
    return None


async def garbage(head: bytes, body: bytes) -> bytes:
    return b"NOT HTTP AT ALL\r\n\r\n"


@pytest.mark.parametrize(("reply", "message"), [
    (hang, "timed out (ReadTimeout)"),
    (close, "request failed (RemoteProtocolError)"),
    (garbage, "request failed (RemoteProtocolError)"),
])
def test_failures_are_httpx_errors_without_the_url(reply: Reply, message: str) -> None:
    async def work(url: str, raw: RawServer) -> BaseException:
        async with build_client(url, timeout=0.5, fast=True) as client:
            request = client.build_request("GET", "/private", params={"api_key": CANARY})
            with pytest.raises(BrokerUnavailable) as caught:
                await send(client, request, connection="cw", deadline=5)
            return caught.value

    err = asyncio.run(serving(reply, work))
    assert str(err) == message
    chain: list[BaseException] = []
    link: BaseException | None = err
    while link is not None:
        chain.append(link)
        # what a traceback would show: the cause, or the context unless suppressed
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    assert all(isinstance(e, BrokerUnavailable | httpx.HTTPError) for e in chain)
    assert not any(CANARY in str(e) for e in chain)


def test_a_body_cut_off_is_a_read_error_and_its_connection_is_not_reused() -> None:
    async def work(url: str, raw: RawServer) -> str:
        async with build_client(url, timeout=0.5, fast=True) as client:
            with pytest.raises(BrokerUnavailable) as caught:
                await send(client, client.build_request("GET", "/", params={"k": CANARY}),
                           connection="cw", deadline=5)
            return str(caught.value)

    message = asyncio.run(serving(cut, work))
    assert message in ("timed out (ReadTimeout)", "request failed (ReadError)")
    assert CANARY not in message


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a request, then reset the connection (SO_LINGER 0: RST, not FIN)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
    writer.transport.abort()


def test_a_connection_reset_after_sending_is_a_read_error() -> None:
    """The request may have arrived: a broker read is unavailable, and a notifier's delivery
    is uncertain ("no answer after sending"), as with httpx's own transport, not "not sent"."""
    async def work() -> tuple[str, str]:
        server = await asyncio.start_server(reset, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with build_client(url, timeout=2, fast=True) as client:
                with pytest.raises(BrokerUnavailable) as broker:
                    await send(client, client.build_request("GET", "/", params={"k": CANARY}),
                               connection="cw", deadline=5)
                with pytest.raises(DeliveryUncertain) as delivery:
                    await post(client, client.build_request("POST", "/hook", json={}),
                               service="webhook")
        finally:
            server.close()
            await server.wait_closed()
        return str(broker.value), str(delivery.value)

    assert asyncio.run(work()) == ("request failed (ReadError)",
                                   "webhook: no answer after sending (ReadError)")


def test_a_refused_connection_is_a_connect_error() -> None:
    async def work() -> str:
        holder = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
        port = holder.sockets[0].getsockname()[1]
        holder.close()
        await holder.wait_closed()  # nothing listens there now
        async with build_client(f"http://127.0.0.1:{port}", timeout=2, fast=True) as client:
            with pytest.raises(BrokerUnavailable) as caught:
                await send(client, client.build_request("GET", "/", params={"k": CANARY}),
                           connection="cw", deadline=5)
        return str(caught.value)

    assert asyncio.run(work()) == "request failed (ConnectError)"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_https_is_verified(certificate: tuple[Path, Path]) -> None:
    """The default context (certifi) refuses a self-signed certificate; a context that
    trusts it connects."""
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def work(url: str, raw: RawServer) -> tuple[str, int]:
        async with build_client(url, timeout=5, fast=True) as client:
            with pytest.raises(BrokerUnavailable) as caught:
                await send(client, client.build_request("GET", "/"), connection="cw",
                           deadline=5)
        trusting = ssl.create_default_context(cafile=str(cert))
        transport = AiohttpTransport(connections=2, ssl_context=trusting)
        async with httpx.AsyncClient(base_url=url, transport=transport) as client:
            answer = await send(client, client.build_request("GET", "/"), connection="cw",
                                deadline=5)
        return str(caught.value), answer.status

    assert asyncio.run(serving(answer_ok, work, tls=tls)) == (
        "request failed (ConnectError)", 200)


class Signing(httpx.Auth):
    """An auth flow like Webull's: a header added as the request leaves."""

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["X-Signed"] = "yes"
        yield request


def test_a_broker_client_sends_straight_to_aiohttp_but_keeps_auth_hooks_and_cookies() -> None:
    """A broker client hands requests to aiohttp without httpx's client layer; an auth flow
    (Webull signs in one) or an event hook puts that layer back, so both still run, and a
    cookie an answer sets is still sent back."""
    seen: list[str] = []

    async def reply(head: bytes, body: bytes) -> bytes:
        return ok(b"{}", b"Set-Cookie: lb=7; Path=/\r\n")

    async def hook(response: httpx.Response) -> None:
        seen.append(response.request.url.path)

    through_client: list[str] = []

    async def work(url: str, raw: RawServer) -> tuple[list[bytes], bool, bool]:
        async with build_client(url, timeout=5, fast=True) as client:
            assert isinstance(client, BrokerClient)
            layered = client.send

            async def spied(request: httpx.Request, **kwargs: Any) -> httpx.Response:
                through_client.append(request.url.path)
                return await layered(request, **kwargs)

            setattr(client, "send", spied)  # noqa: B010 - an instance attribute, on purpose
            plain = client.direct
            for path in ("/a", "/b"):
                answer = await send(client, client.build_request("GET", path),
                                    connection="cw", deadline=5)
                assert answer.status == 200
            client.auth = Signing()
            client.event_hooks = {"response": [hook]}
            signed = not client.direct
            await send(client, client.build_request("GET", "/c"), connection="cw",
                       deadline=5)
        return [head.lower() for head, _ in raw.requests], plain, signed

    heads, plain, signed = asyncio.run(serving(reply, work))
    assert plain and signed
    assert through_client == ["/c"]  # /a and /b went straight to aiohttp
    assert b"cookie:" not in heads[0] and heads[1].count(b"cookie: lb=7") == 1
    assert b"x-signed: yes" in heads[2] and b"x-signed" not in heads[1]
    assert seen == ["/c"]  # the hook ran for the request that went through the client


def test_a_closed_broker_client_sends_nothing() -> None:
    """As httpx refuses a closed client, the direct path does not open a new session."""
    async def work(url: str, raw: RawServer) -> int:
        client = build_client(url, timeout=5, fast=True)
        await send(client, client.build_request("GET", "/"), connection="cw", deadline=5)
        await client.aclose()
        with pytest.raises(RuntimeError, match="client has been closed"):
            await send(client, client.build_request("GET", "/"), connection="cw", deadline=5)
        return len(raw.requests)

    assert asyncio.run(serving(answer_ok, work)) == 1
