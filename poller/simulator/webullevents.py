"""A fake of Webull's trade events service (gRPC) on loopback, for tests and the demo.

Built from the official package's generated servicer (``events_pb2_grpc.EventServiceServicer``
and ``add_EventServiceServicer_to_server``, webull-openapi-python-sdk 3.0.4) on a gRPC
server at 127.0.0.1, insecure (poller's ``push_tls = false``, loopback only). It is the
synchronous server, each stream served by a thread of its pool, like the HTTP simulators:
a ``grpc.aio`` server beside poller's ``grpc.aio`` client in one process (the demo, the
tests) makes two event loops share grpc's poller, which fails with ``BlockingIOError``.

A subscription's metadata is verified with the official signer's own functions
(``signature_composer._get_body_string`` and ``default_signature_composer``), over the
request as received; a missing header, a wrong key, a bad signature or a timestamp more
than :data:`CLOCK_SKEW` away is refused with UNAUTHENTICATED (or, with
``refuse_with="event"``, an in-stream ``AuthError`` answer). A good one gets
``SubscribeSuccess``, then every :meth:`~WebullEventsServer.push` for its accounts as an
``eventType`` 1024 / ``subscribeType`` 1 JSON answer, until :meth:`~WebullEventsServer.drop`
ends every stream with UNAVAILABLE.
"""

from __future__ import annotations

import hmac
import itertools
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from typing import Any, Literal

import grpc
from webull.core.auth.algorithm import (
    sha_hmac1,
    sha_hmac256_new,
)
from webull.core.auth.composer import (
    default_signature_composer,
)
from webull.trade.events import (
    events_pb2,
    events_pb2_grpc,
    signature_composer,
    types,
)

#: Distance allowed between x-timestamp and the clock (undocumented; as the REST simulator).
CLOCK_SKEW = 300.0
SIGNED = ("x-app-key", "x-signature-algorithm", "x-signature-version", "x-signature-nonce",
          "x-timestamp")
_SIGNERS = {"HMAC-SHA1": sha_hmac1, "HMAC-SHA256": sha_hmac256_new}
_DROP = object()


class _Servicer(events_pb2_grpc.EventServiceServicer):  # type: ignore[misc]
    def __init__(self, owner: WebullEventsServer) -> None:
        self._owner = owner

    def Subscribe(self, request: Any, context: Any) -> Iterator[Any]:
        """One subscription: verify, then stream until dropped or stopped."""
        owner = self._owner
        metadata = {key: value for key, value in context.invocation_metadata()}
        problem = owner.check(request, metadata)
        with owner.lock:
            owner.subscriptions.append((list(request.accounts), problem))
        if problem is not None:
            if owner.refuse_with == "event":
                yield owner.answer(events_pb2.AuthError, problem, content_type="text/plain")
                return
            context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        inbox: queue.Queue[tuple[float, Any]] = queue.Queue()
        subscriber = (set(request.accounts), inbox)
        owner.subscribers.append(subscriber)
        owner.connected.set()
        try:
            yield owner.answer(events_pb2.SubscribeSuccess, "subscribe success",
                               content_type="text/plain")
            while context.is_active() and not owner.stopping.is_set():
                try:
                    due, item = inbox.get(timeout=0.2)
                except queue.Empty:
                    continue  # look at the context and the stop flag again
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # the simulated network's delay, in order
                if item is _DROP:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "stream reset by server")
                yield item
        finally:
            owner.subscribers.remove(subscriber)


class WebullEventsServer:
    """Webull's ``EventService`` on 127.0.0.1 (a random port unless ``port`` is given).

    :param app_key, app_secret: the credentials a subscription must be signed with.
    :param refuse_with: ``status`` (UNAUTHENTICATED) or ``event`` (an ``AuthError`` answer).
    """

    def __init__(self, *, app_key: str, app_secret: str, port: int = 0,
                 refuse_with: Literal["status", "event"] = "status") -> None:
        self.app_key = app_key
        self.app_secret = app_secret
        self.refuse_with = refuse_with
        self.wall: Callable[[], float] = time.time
        #: Delay every pushed message by a uniform (low, high) in seconds, order kept
        #: (benchmarks: a stream has network latency too).
        self.latency: tuple[float, float] | None = None
        self._due = 0.0
        self._rng = random.Random(7)
        self.lock = threading.Lock()
        #: (accounts, refusal or None) of every subscription attempt, in order.
        self.subscriptions: list[tuple[list[str], str | None]] = []
        #: Everything pushed, as sent.
        self.pushed: list[str] = []
        #: Set once a subscription has been accepted (tests wait on it).
        self.connected = threading.Event()
        self.subscribers: list[tuple[set[str], queue.Queue[tuple[float, Any]]]] = []
        #: Set by :meth:`stop`: every stream ends.
        self.stopping = threading.Event()
        self._port = port
        self._server: Any = None
        self._request_ids = itertools.count(1)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (after :meth:`start`)."""
        return self._port

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT``: poller's ``push_url``."""
        return f"127.0.0.1:{self._port}"

    def start(self) -> WebullEventsServer:
        """Serve from a thread pool; returns once the port is bound."""
        self.stopping.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32,
                                                        thread_name_prefix="sim-wb-events"))
        events_pb2_grpc.add_EventServiceServicer_to_server(_Servicer(self), server)
        self._port = server.add_insecure_port(f"127.0.0.1:{self._port}")
        if not self._port:
            raise RuntimeError("webull events server could not bind its port")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """End every stream and stop serving (also when never started)."""
        self.stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait(10)

    # -- what tests and the simulator do ------------------------------------------------

    def answer(self, event_type: int, payload: str, *,
               content_type: str = "application/json") -> Any:
        """One ``SubscribeResponse`` as the service sends it."""
        return events_pb2.SubscribeResponse(
            eventType=event_type, subscribeType=types.ORDER_STATUS_CHANGED,
            contentType=content_type, payload=payload,
            requestId=f"sim-{next(self._request_ids)}", timestamp=int(self.wall() * 1000))

    def push(self, event: str | dict[str, Any], *, event_type: int = types.EVENT_TYPE_ORDER,
             content_type: str = "application/json") -> int:
        """Send one event to every subscriber of its account; returns how many got it.

        ``event`` is the JSON text (or a dict made JSON); its ``account_id`` (top level or
        in ``payload``) picks the subscribers, an event without one goes to all.
        """
        text = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
        account = _account_of(text)
        with self.lock:
            self.pushed.append(text)
        message = self.answer(event_type, text, content_type=content_type)
        targets = [queue for accounts, queue in list(self.subscribers)
                   if account is None or account in accounts]
        self._deliver(targets, message)
        return len(targets)

    def ping(self) -> None:
        """Send a ``Ping`` answer to every subscriber."""
        self._deliver([q for _, q in list(self.subscribers)],
                      self.answer(events_pb2.Ping, "ping", content_type="text/plain"))

    def drop(self) -> None:
        """End every open stream with UNAVAILABLE (a connection lost mid-order)."""
        self.connected.clear()
        self._deliver([q for _, q in list(self.subscribers)], _DROP)

    def _deliver(self, queues: list[queue.Queue[tuple[float, Any]]], item: Any) -> None:
        due = time.monotonic()
        if self.latency is not None:
            # A network delay, for benchmarks: random, but a stream keeps its order (TCP).
            with self.lock:
                self._due = max(self._due, due + self._rng.uniform(*self.latency))
                due = self._due
        for inbox in queues:
            inbox.put((due, item))

    # -- the signature check ------------------------------------------------------------

    def check(self, request: Any, metadata: dict[str, str]) -> str | None:
        """Why the subscription is refused (None: it is signed right)."""
        for name in (*SIGNED, "x-signature"):
            if not metadata.get(name):
                return f"metadata {name} is required"
        signer = _SIGNERS.get(metadata["x-signature-algorithm"])
        if signer is None:
            return "signature algorithm is not supported"
        if metadata["x-signature-version"] != signer.get_signer_version():
            return "signature version is not supported"
        if not hmac.compare_digest(metadata["x-app-key"].encode(), self.app_key.encode()):
            return "app key is invalid"
        try:
            stamp = datetime.strptime(metadata["x-timestamp"], "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            return "timestamp is illegal"
        if abs(stamp.replace(tzinfo=UTC).timestamp() - self.wall()) > CLOCK_SKEW:
            return "clock skew exceeded"
        # The official signer's own steps, over the request as received.
        params = default_signature_composer._lower_key_dict(
            {name: metadata[name] for name in SIGNED})
        body = signature_composer._get_body_string(request, signer)
        text = default_signature_composer._build_sign_string(params, None, body)
        expected = default_signature_composer._gen_signature(text, self.app_secret, signer)
        if not hmac.compare_digest(metadata["x-signature"].encode(), expected.encode()):
            return "signature is incorrect"
        return None


def _account_of(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    inner = data.get("payload")
    source = inner if isinstance(inner, dict) else data
    account = source.get("account_id")
    return str(account) if account not in (None, "") else None
