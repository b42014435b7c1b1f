"""Outbox: a connection's bounded outbound queue. Answers wait for room; live events never
wait, and one that does not fit marks the client a slow consumer."""

from __future__ import annotations

import trio
import trio.testing

from relay.server.outbox import Outbox


def overflow_counter(outbox: Outbox) -> list[int]:
    calls: list[int] = []
    outbox.on_overflow = lambda: calls.append(1)
    return calls


async def test_offer_queues_what_fits_up_to_the_limit_exactly() -> None:
    outbox = Outbox(10)
    assert outbox.pending_bytes == 0
    assert outbox.offer("abcd") is True
    assert outbox.offer("efghij") is True  # 10 of 10: a full outbox is not an overflow
    assert outbox.pending_bytes == 10
    assert outbox.overflowed is False
    assert await outbox.get_many(100) == ["abcd", "efghij"]
    assert outbox.pending_bytes == 0


async def test_a_live_event_that_does_not_fit_marks_a_slow_consumer_once() -> None:
    outbox = Outbox(10)
    calls = overflow_counter(outbox)
    assert outbox.offer("123456") is True
    assert outbox.offer("12345") is False  # 11 > 10
    assert outbox.overflowed is True
    assert calls == [1]
    # From then on nothing is queued, even what would fit, and the client is told once.
    assert outbox.offer("1") is False
    outbox.give_up()
    assert calls == [1]
    assert outbox.pending_bytes == 6


def test_a_message_larger_than_the_whole_outbox_overflows_an_empty_one() -> None:
    outbox = Outbox(10)
    calls = overflow_counter(outbox)
    assert outbox.offer("x" * 11) is False
    assert outbox.overflowed is True
    assert outbox.pending_bytes == 0
    assert calls == [1]


def test_give_up_without_a_callback_still_marks_the_outbox() -> None:
    outbox = Outbox(10)
    outbox.give_up()
    assert outbox.overflowed is True
    assert outbox.offer("a") is False


async def test_put_does_not_wait_up_to_half_full() -> None:
    outbox = Outbox(10)
    with trio.fail_after(1):
        await outbox.put("12345")  # 0 queued: no wait; 5 now, exactly half
        await outbox.put("678")  # 5 is not more than half: no wait
    assert outbox.pending_bytes == 8


async def test_put_waits_while_more_than_half_full_until_the_writer_takes() -> None:
    outbox = Outbox(10)
    assert outbox.offer("123456")  # more than half
    done: list[str] = []

    async def answer() -> None:
        await outbox.put("answer")
        done.append("answer")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # backpressure: the answer waits
        assert outbox.pending_bytes == 6
        assert await outbox.get_many(100) == ["123456"]
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["answer"]
    assert await outbox.get_many(100) == ["answer"]


async def test_a_waiting_put_is_released_when_the_client_is_given_up() -> None:
    outbox = Outbox(10)
    assert outbox.offer("123456")
    done: list[str] = []

    async def answer() -> None:
        await outbox.put("answer")
        done.append("answer")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        outbox.give_up()
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["answer"]


async def test_get_many_waits_for_the_first_message() -> None:
    outbox = Outbox(100)
    got: list[list[str]] = []

    async def writer() -> None:
        got.append(await outbox.get_many(100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert outbox.offer("first")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [["first"]]


async def test_get_many_takes_in_order_up_to_max_bytes_and_leaves_the_rest() -> None:
    outbox = Outbox(100)
    for message in ("aaa", "bbb", "cc", "dddd"):
        assert outbox.offer(message)
    assert await outbox.get_many(8) == ["aaa", "bbb", "cc"]  # 8 of 8
    assert outbox.pending_bytes == 4
    assert await outbox.get_many(8) == ["dddd"]
    assert outbox.pending_bytes == 0


async def test_get_many_takes_at_least_one_message_however_large() -> None:
    outbox = Outbox(100)
    assert outbox.offer("x" * 50)
    assert outbox.offer("y")
    assert await outbox.get_many(10) == ["x" * 50]
    assert await outbox.get_many(10) == ["y"]
