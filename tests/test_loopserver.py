"""The loopback server: one thread per request, idle connections time out, an exception is
a JSON 500, and stopping never waits for a client."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from poller.loopserver import LoopbackServer, StartResponse, json_answer


def test_requests_run_side_by_side_and_failures_are_json() -> None:
    entered, release = threading.Event(), threading.Event()

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/slow":
            entered.set()
            release.wait(30)
        if path == "/boom":
            raise RuntimeError("a bug")
        return json_answer(start, "200 OK", {"path": path})

    server = LoopbackServer(app, "127.0.0.1", 0, name="test", timeout=0.5)
    server.start()
    idle = socket.create_connection(("127.0.0.1", server.port))  # says nothing at all
    try:
        url = f"http://127.0.0.1:{server.port}"
        slow = threading.Thread(target=lambda: urllib.request.urlopen(url + "/slow", timeout=30))
        slow.start()
        assert entered.wait(10)
        with urllib.request.urlopen(url + "/fast", timeout=10) as answer:
            assert json.loads(answer.read()) == {"path": "/fast"}  # not behind /slow
        try:
            urllib.request.urlopen(url + "/boom", timeout=10)
        except urllib.error.HTTPError as err:
            assert (err.code, json.loads(err.read())) == (
                500, {"error": "internal error (logged by the daemon)"})
        else:
            raise AssertionError("no 500")
        release.set()
        slow.join(timeout=10)
        assert idle.recv(1) == b""  # the idle connection was dropped after its time limit
    finally:
        release.set()
        idle.close()
        server.stop()
