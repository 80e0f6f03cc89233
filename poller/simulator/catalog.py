"""The simulators ``poller demo`` can start, by broker kind."""

from __future__ import annotations

from poller.simulator.base import BrokerSim
from poller.simulator.coinw import CoinWSim
from poller.simulator.longport import LongPortSim
from poller.simulator.shioaji import ShioajiSim

SIMULATORS: dict[str, type[BrokerSim]] = {
    "shioaji": ShioajiSim,
    "longport": LongPortSim,
    "coinw": CoinWSim,
}
