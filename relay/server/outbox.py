"""A connection's bounded outbound queue, measured in characters of JSON text (a byte each
for ASCII, up to four for other text: counting them would cost an encode per delivery).

Answers to the client's own requests wait for room (backpressure on that client only);
live events never wait: when they do not fit, the connection is marked as a slow consumer.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class Outbox:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # A list, not a deque: an idle connection's empty deque costs 600 bytes.
        self._queue: list[str] = []
        self._bytes = 0
        self._changed = trio.Event()
        self._waiting = 0  # tasks waiting on _changed: no new Event a message otherwise
        self.overflowed = False
        # Called once when the client turns out too slow (ends its connection).
        self.on_overflow: Callable[[], None] | None = None

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def _push(self, message: str) -> None:
        self._queue.append(message)
        self._bytes += len(message)
        self._wake()

    def _wake(self) -> None:
        if self._waiting:
            self._changed.set()
            self._changed = trio.Event()

    async def _wait_for_change(self) -> None:
        self._waiting += 1
        try:
            await self._changed.wait()
        finally:
            self._waiting -= 1

    def give_up(self) -> None:
        """Mark the client as a slow consumer: it will be told and disconnected."""
        if not self.overflowed and self.on_overflow is not None:
            self.on_overflow()
        self.overflowed = True
        self._wake()

    def offer(self, message: str) -> bool:
        """Queue without waiting; False (and overflowed set) when it does not fit."""
        if self.overflowed:
            return False
        if self._bytes + len(message) > self.max_bytes:
            self.give_up()
            return False
        self._push(message)
        return True

    async def put(self, message: str) -> None:
        """Queue, waiting while the outbox is more than half full."""
        while self._bytes > self.max_bytes // 2 and not self.overflowed:
            await self._wait_for_change()
        self._push(message)

    async def get_many(self, max_bytes: int) -> list[str]:
        """Every queued message up to about max_bytes (at least one), waiting for the first."""
        while not self._queue:
            await self._wait_for_change()
        queue = self._queue
        count, size = 0, 0
        for message in queue:
            if count and size + len(message) > max_bytes:
                break
            count += 1
            size += len(message)
        if count == len(queue):
            taken, self._queue = queue, []
        else:
            taken = queue[:count]
            del queue[:count]
        self._bytes -= size
        self._wake()
        return taken
