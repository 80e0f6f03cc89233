"""An httpx transport that sends over aiohttp: the broker connections' hot path.

Measured on this machine, httpx's own transport (httpcore over anyio, its pool scanning
every connection twice per request) costs about 1.5 ms of CPU per request; aiohttp, whose
HTTP parser and URL handling are compiled, about 0.8 ms for the same request. A connection
polling at its full budget spends most of its CPU there, so the broker adapters' and the
notifiers' clients send through aiohttp while everything above (``httpx.Request``/
``Response``, timeouts, :func:`poller.httpclient.send`, the adapters' signing) stays httpx.

What this keeps exact:

* the URL goes out byte for byte as httpx encoded it (``yarl.URL(..., encoded=True)``):
  aiohttp would otherwise re-quote the query (``%2F`` → ``/``), and a signature computed over
  the query string must see what was signed;
* no redirects, no decompression, no cookies of aiohttp's own (httpx does each once);
* aiohttp's errors become httpx's (connect, timeout, read, protocol), so callers translate
  one family — a connection reset after it was made is a ``ReadError``, as with httpx, so a
  notifier reports "may have arrived", not "not sent"; their messages never carry the URL,
  whose query holds keys and signatures;
* httpx's timeouts: ``pool`` bounds waiting for a connection (DNS and connecting included),
  ``connect`` the TCP/TLS connect, ``read`` each read;
* the pool's size is the caller's: a request the rate budget admitted must not then queue.

Proxies: httpx ignores ``HTTP_PROXY`` and the like for a client given a transport of its
own, so :func:`poller.httpclient.build_client` uses this one only when the environment names
no proxy (:func:`poller.httpclient.environment_proxies`); behind a proxy the broker clients
keep httpx's own transport, which routes through it exactly as before.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
import yarl

#: Seconds an idle pooled connection is kept (httpx's default keep-alive expiry).
KEEPALIVE = 5.0


def _translated(err: BaseException) -> httpx.TransportError:
    """The httpx error for an aiohttp one, its message free of the request's URL."""
    name = type(err).__name__
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(f"{name}: no connection in time")
    if isinstance(err, aiohttp.ClientConnectorError):
        # Host, port and the OS error: no path or query.
        return httpx.ConnectError(f"{name}: cannot connect to {err.host}:{err.port} "
                                  f"({err.os_error})")
    if isinstance(err, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(f"{name}: no answer in time")
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(f"{name}: the server closed the connection")
    if isinstance(err, aiohttp.ClientPayloadError):
        return httpx.ReadError(f"{name}: the answer's body was cut off or malformed")
    if isinstance(err, aiohttp.ClientResponseError):  # its str() holds the URL
        return httpx.RemoteProtocolError(f"{name}: not a readable HTTP answer")
    if isinstance(err, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(f"{name}: the URL cannot be requested")
    if isinstance(err, OSError):
        # Connected (a failed connect is ClientConnectorError, above), then reset or broken
        # while sending or reading: the request may have arrived, as httpx's ReadError says.
        return httpx.ReadError(f"{name}: the connection failed after it was made")
    return httpx.NetworkError(f"{name}: the request failed")


class _Body(httpx.AsyncByteStream):
    """An aiohttp answer's body as httpx reads it; closing it frees the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _translated(err) from None
        self._done = True

    async def aclose(self) -> None:
        if self._done:
            self._response.release()  # read to the end: the connection goes back to the pool
        else:
            self._response.close()  # half read: the connection cannot be reused


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests over one aiohttp session with at most ``connections`` open.

    :param connections: connections open at once, in use or idle.
    :param ssl_context: how HTTPS is verified; by default httpx's own (certifi, verified).
    """

    def __init__(self, *, connections: int, ssl_context: ssl.SSLContext | None = None,
                 keepalive: float = KEEPALIVE) -> None:
        self._connections = connections
        self._ssl = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made at the first request, inside the running loop aiohttp binds it to.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0,
                                             keepalive_timeout=self._keepalive, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(), requote_redirect_url=False,
                # httpx sent every header it means to; aiohttp adds none of its own.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its answer with the body still to be read."""
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        session = self._open()
        try:
            response = await session.request(
                request.method, yarl.URL(str(request.url), encoded=True),
                headers=list(request.headers.multi_items()), data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, connect=timeout.get("pool"),
                                              sock_connect=timeout.get("connect"),
                                              sock_read=timeout.get("read")))
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _translated(err) from None
        return httpx.Response(
            response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1"))
                     for k, v in response.raw_headers],
            stream=_Body(response),
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode("latin-1")})

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
