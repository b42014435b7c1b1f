"""Signature checks off the event loop: batches of events verified in worker threads.

coincurve releases the GIL while it verifies, so a worker thread uses the second core while
the event loop goes on reading and writing sockets; batching pays one thread hop for many
events.
"""

from __future__ import annotations

import trio

from relay.batching import Batcher
from relay.events.model import Event
from relay.events.rules import check_signature

MAX_BATCH = 256
WORKERS = 2


def _check_all(events: list[Event]) -> list[str | None]:
    return [check_signature(event) for event in events]


class BatchVerifier(Batcher[Event, "str | None"]):
    def __init__(self, max_batch: int = MAX_BATCH, workers: int = WORKERS) -> None:
        super().__init__(self._verify, max_batch=max_batch, workers=workers)

    async def _verify(self, events: list[Event]) -> list[str | None]:
        return await trio.to_thread.run_sync(_check_all, events)

    async def check(self, event: Event) -> str | None:
        """The refusal reason, or None when id and signature are right."""
        if not self.running:
            return check_signature(event)
        return await self.submit(event)
