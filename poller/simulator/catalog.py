"""The simulators ``poller demo`` can start, by broker kind."""

from __future__ import annotations

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
