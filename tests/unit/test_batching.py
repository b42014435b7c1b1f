"""Batcher: a submitter's timeout ends its wait, not its item's processing."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.batching import EXPIRY_CHECK_SECONDS, Batcher, BatchTimeout


async def test_a_submitter_past_its_timeout_gets_batch_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()
    processed: list[str] = []

    async def process(items: list[str]) -> list[str]:
        await release.wait()  # the batch hangs, as a stalled database would
        processed.extend(items)
        return items

    batcher: Batcher[str, str] = Batcher(process, max_batch=10, workers=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        start = trio.current_time()
        with pytest.raises(BatchTimeout):
            await batcher.submit("late", timeout=5)
        assert 5 <= trio.current_time() - start <= 5 + EXPIRY_CHECK_SECONDS
        release.set()
        # The timed-out item is still processed, and the batcher carries on.
        assert await batcher.submit("next", timeout=5) == "next"
        assert processed == ["late", "next"]
        nursery.cancel_scope.cancel()


async def test_without_a_timeout_a_submitter_waits_for_its_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def process(items: list[int]) -> list[int]:
        await release.wait()
        return [i * 2 for i in items]

    batcher: Batcher[int, int] = Batcher(process, max_batch=10, workers=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher.run)
        results: list[int] = []

        async def submit() -> None:
            results.append(await batcher.submit(21))

        nursery.start_soon(submit)
        await trio.sleep(3600)
        assert results == []
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert results == [42]
        nursery.cancel_scope.cancel()


async def test_one_failing_item_does_not_fail_its_batch() -> None:
    """The batch fails as a whole (as a transaction does); each item then goes again alone,
    so only the bad one gets the error."""
    batches: list[list[str]] = []

    async def process(items: list[str]) -> list[str]:
        batches.append(items)
        if "bad" in items:
            raise ValueError("cannot store bad")
        return [item.upper() for item in items]

    batcher: Batcher[str, str] = Batcher(process, max_batch=10, workers=1)
    results: dict[str, str] = {}

    async def submit(item: str) -> None:
        try:
            results[item] = await batcher.submit(item)
        except ValueError as exc:
            results[item] = f"error: {exc}"

    async with trio.open_nursery() as nursery:
        for item in ("one", "bad", "two"):
            nursery.start_soon(submit, item)
        await trio.testing.wait_all_tasks_blocked()  # all three queued: one batch
        nursery.start_soon(batcher.run)
        while len(results) < 3:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert results == {"one": "ONE", "bad": "error: cannot store bad", "two": "TWO"}
    # One batch of the three (in whatever order trio ran the submitters), then each alone.
    assert sorted(batches[0]) == ["bad", "one", "two"]
    assert sorted(batches[1:]) == [["bad"], ["one"], ["two"]]
