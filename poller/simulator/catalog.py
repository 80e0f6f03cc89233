"""The simulators ``poller demo`` can start, by broker kind."""

from __future__ import annotations

import importlib.util
from typing import Any

from poller.simulator.base import BrokerSim
from poller.simulator.coinw import CoinWSim
from poller.simulator.longport import LongPortSim
from poller.simulator.shioaji import ShioajiSim
from poller.simulator.webull import WebullSim

SIMULATORS: dict[str, type[BrokerSim]] = {
    "shioaji": ShioajiSim,
    "longport": LongPortSim,
    "webull": WebullSim,
    "coinw": CoinWSim,
}


def _importable(*modules: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ModuleNotFoundError:  # a parent package is missing
        return False


def push_options(kind: str) -> dict[str, Any]:
    """The options that make a ``kind`` simulator push as the broker does, when the push
    extra is installed (``pip install '.[push]'``); none otherwise (the demo then polls)."""
    if kind == "webull" and _importable("grpc", "webull.trade.events"):
        return {"push_events": True}
    if kind == "shioaji" and _importable("httpx_sse"):
        return {"push_events": True}
    if kind == "longport" and _importable("websockets", "google.protobuf"):
        return {"push_events": True}
    return {}
