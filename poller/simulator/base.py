"""What every broker simulator shares: its HTTP server, order book, limits and autopilot."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from decimal import Decimal
from typing import Any, ClassVar

from poller.simulator.engine import OrderBook
from poller.simulator.httpserver import SimServer, SlidingWindow


class BrokerSim(ABC):
    """Base of the broker simulators.

    Subclasses register their routes on ``self.server`` and render ``self.book`` orders in
    their broker's format. ``windows`` holds the documented limits the simulator enforces on
    arrival time (name → :class:`SlidingWindow`); tests and benchmarks read their counters.
    """

    kind: ClassVar[str]
    #: (symbol, reference price) pairs the autopilot trades.
    symbols: ClassVar[list[tuple[str, Decimal]]] = []

    def __init__(self, *, seed: int | None = None, port: int = 0) -> None:
        self.server = SimServer(self.kind, port=port)
        self.book = OrderBook(self.new_order_id, seed=seed)
        self.windows: dict[str, SlidingWindow] = {}
        self._autopilot: threading.Thread | None = None
        self._stop = threading.Event()
        self.server.not_found = self.not_found  # type: ignore[method-assign]

    @abstractmethod
    def new_order_id(self, number: int) -> str:
        """The broker's id format for the ``number``-th order."""

    @abstractmethod
    def accounts(self) -> list[str]:
        """Account ids the simulator knows."""

    @abstractmethod
    def broker_config(self, name: str) -> dict[str, Any]:
        """A ``[brokers.NAME]`` table that points poller at this simulator."""

    def not_found(self, request: Any) -> Any:
        """The broker's answer to an unknown path."""
        return SimServer.not_found(self.server, request)

    @property
    def url(self) -> str:
        """The simulator's base URL."""
        return self.server.url

    def start(self) -> BrokerSim:
        """Start answering requests."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop the autopilot and the server."""
        self._stop.set()
        if self._autopilot:
            self._autopilot.join(timeout=5)
        self.server.stop()

    def autopilot(self, *, every: float = 0.7, place_probability: float = 0.45,
                  max_open: int = 6) -> None:
        """Move orders at random every ``every`` seconds until :meth:`stop`."""
        accounts = self.accounts()

        def run() -> None:
            while not self._stop.wait(every):
                self.book.step(accounts=accounts, symbols=self.symbols,
                               place_probability=place_probability, max_open=max_open)

        self._autopilot = threading.Thread(target=run, name=f"autopilot-{self.kind}",
                                           daemon=True)
        self._autopilot.start()

    def is_list_request(self, request: Any) -> bool:
        """Whether a logged request was an account-wide list call (for benchmarks)."""
        return False

    def polled_order(self, request: Any) -> str | None:
        """The order a logged request asked about by id, if it was a per-order call."""
        return None

    def violations(self) -> int:
        """Requests refused for breaking a documented limit, all windows together."""
        return sum(w.violations for w in self.windows.values())
