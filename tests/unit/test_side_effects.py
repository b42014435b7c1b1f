"""Compensation: unless a handler commits, its undos run in reverse order however it leaves
(an error, a refusal, cancellation), shielded and bounded by their own timeout."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from relay.events.side_effects import (
    DEFAULT_COMPENSATION_SECONDS,
    Compensation,
    Handled,
    Verdict,
)


def recorder(done: list[str], name: str) -> Callable[[], Awaitable[None]]:
    async def undo() -> None:
        done.append(name)

    return undo


async def test_leaving_without_commit_undoes_every_step_in_reverse_order() -> None:
    done: list[str] = []
    async with Compensation() as steps:
        for name in ("reserve name", "write pointer", "store event"):
            steps.push(name, recorder(done, name))
        assert done == []  # nothing is undone while the handler works
    assert done == ["store event", "write pointer", "reserve name"]


async def test_a_committed_handler_undoes_nothing() -> None:
    done: list[str] = []
    async with Compensation() as steps:
        steps.push("a", recorder(done, "a"))
        steps.push("b", recorder(done, "b"))
        steps.commit()
    assert done == []


async def test_an_error_undoes_the_steps_and_still_propagates() -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError, match="backend down"):
        async with Compensation() as steps:
            steps.push("a", recorder(done, "a"))
            steps.push("b", recorder(done, "b"))
            raise RuntimeError("backend down")
    assert done == ["b", "a"]


async def test_cancellation_does_not_cut_an_undo_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handler is cancelled (a client disconnect, the ingest deadline, shutdown): each
    undo still runs to its end, awaits included."""
    done: list[str] = []

    async def slow_undo() -> None:
        await trio.sleep(1)
        done.append("slow")

    with trio.CancelScope() as scope:
        async with Compensation() as steps:
            steps.push("first", recorder(done, "first"))
            steps.push("slow", slow_undo)
            scope.cancel()
            await trio.sleep(0)  # the handler's next await is cancelled
            done.append("not reached")
    assert scope.cancelled_caught
    assert done == ["slow", "first"]


async def test_a_failing_undo_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[str] = []

    async def broken() -> None:
        raise OSError("store unreachable")

    with caplog.at_level(logging.ERROR, logger="relay.events.side_effects"):
        async with Compensation() as steps:
            steps.push("a", recorder(done, "a"))
            steps.push("broken step", broken)
            steps.push("c", recorder(done, "c"))
    assert done == ["c", "a"]
    [record] = caplog.records
    assert record.getMessage() == "compensation step 'broken step' failed"
    assert record.exc_info is not None and isinstance(record.exc_info[1], OSError)


async def test_a_stuck_undo_is_abandoned_after_the_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[str] = []

    async def stuck() -> None:
        await trio.sleep(3600)  # an hour: as good as forever, and still a bounded test

    start = trio.current_time()
    with caplog.at_level(logging.ERROR, logger="relay.events.side_effects"):
        async with Compensation(timeout=5) as steps:
            steps.push("earlier", recorder(done, "earlier"))
            steps.push("stuck", stuck)
    assert trio.current_time() - start == pytest.approx(5)
    # The compensation ended there: what was left to undo is not run.
    assert done == []
    assert [r.getMessage() for r in caplog.records] == ["compensation did not finish within 5.0 s"]


async def test_a_stuck_undo_does_not_hold_a_cancelled_handler_past_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stuck() -> None:
        await trio.sleep(3600)  # an hour: as good as forever, and still a bounded test

    start = trio.current_time()
    with trio.CancelScope() as scope:
        async with Compensation(timeout=3) as steps:
            steps.push("stuck", stuck)
            scope.cancel()
            await trio.sleep(0)
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(3)


async def test_the_default_timeout() -> None:
    assert Compensation().timeout == DEFAULT_COMPENSATION_SECONDS == 10.0


def test_a_handled_event_publishes_nothing_unless_told() -> None:
    handled = Handled(Verdict(False, "blocked: no"))
    assert handled.publish == ()
    assert handled.verdict.accepted is False
    assert handled.verdict.message == "blocked: no"
