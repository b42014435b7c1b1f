"""Micro-batching: callers submit one item and wait for its own result, while a few worker
tasks process whatever has queued up meanwhile as one batch (one database crossing, one
thread hop). Under load batches grow by themselves; when idle, a lone item goes at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    done: trio.Event = field(default_factory=trio.Event)
    result: R | None = None
    error: BaseException | None = None


class Batcher(Generic[T, R]):
    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_batch: int,
        workers: int,
    ) -> None:
        self.process = process
        self.max_batch = max_batch
        self.workers = workers
        self._queue: deque[_Pending[T, R]] = deque()
        self._wake = trio.Event()
        self.running = False
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        pending: _Pending[T, R] = _Pending(item)
        self._queue.append(pending)
        self._wake.set()
        # Once queued the item is processed even if this waiter goes away.
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    async def run(self) -> None:
        self.running = True
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.workers):
                    nursery.start_soon(self._work_forever)
        finally:
            self.running = False

    async def _work_forever(self) -> None:
        while True:
            while not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
            try:
                # Shielded: a batch in flight completes, so no submitter is left unanswered.
                with trio.CancelScope(shield=True):
                    results = await self.process([p.item for p in batch])
            except Exception as exc:
                for pending in batch:
                    pending.error = exc
                    pending.done.set()
                continue
            self.batches += 1
            self.items += len(batch)
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
                pending.done.set()
