"""A push stream read in a task as the runner reads it, for the stream tests of each broker."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

from poller.errors import BrokerError
from poller.pushfeed import PushedOrder, PushStream, is_marker

WAIT = 10.0


class Consumer:
    """Iterates ``updates()`` in a task, as the runner does; keeps what it got."""

    def __init__(self, stream: PushStream) -> None:
        self.stream = stream
        self.items: asyncio.Queue[PushedOrder] = asyncio.Queue()
        #: Markers (CONNECTED) yielded before the first order update.
        self.markers: list[PushedOrder] = []
        self.connected = asyncio.Event()
        self.error: BrokerError | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        updates: Any = self.stream.updates()
        try:
            async with aclosing(updates) as stream:
                async for update in stream:
                    if is_marker(update):
                        assert self.items.empty()  # it comes first
                        self.markers.append(update)
                        self.connected.set()
                    else:
                        await self.items.put(update)
        except BrokerError as err:
            self.error = err

    async def up(self) -> None:
        """Wait until the stream says it is connected."""
        await asyncio.wait_for(self.connected.wait(), WAIT)

    async def next(self) -> PushedOrder:
        """The next order update."""
        return await asyncio.wait_for(self.items.get(), WAIT)

    async def finished(self) -> BrokerError | None:
        """Wait for the stream to end; the error that ended it, if any."""
        await asyncio.wait_for(self.task, WAIT)
        return self.error
