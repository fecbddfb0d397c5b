"""The bus contract, run against the in-memory bus and the real Redis server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from hub.bus import Bus, CameraHealth, IncidentCandidate, IncidentEvent


def candidate(n: int, **kw: object) -> IncidentCandidate:
    now = datetime.now(UTC)
    fields: dict[str, object] = dict(
        event_id=f"ev-{n}", phase="start", type="person_down", camera_id="cam-1", at=now,
        started_at=now, confidence=0.5 + n / 100, boxes=[(1.0, 2.0, 3.0, 4.0)],
        frame_size=(640, 480), track_id=n, snapshot_jpeg=b"\xff\xd8jpeg\x00bytes",
    )
    fields.update(kw)
    return IncidentCandidate.model_validate(fields)


async def test_published_before_consumer_exists_is_delivered(bus: Bus) -> None:
    """A durable message published before any consumer group exists is still delivered."""
    await bus.publish(candidate(1))
    got = await bus.consume(IncidentCandidate, "g", "c1", block_s=1)
    assert [d.message.event_id for d in got] == ["ev-1"]


async def test_message_round_trips_typed(bus: Bus) -> None:
    """Every field, including bytes and datetimes, comes back equal and typed."""
    sent = candidate(7)
    await bus.publish(sent)
    (d,) = await bus.consume(IncidentCandidate, "g", "c1", block_s=1)
    assert d.message == sent
    assert isinstance(d.message, IncidentCandidate)


async def test_order_is_kept(bus: Bus) -> None:
    """Messages arrive in the order they were published."""
    for i in range(5):
        await bus.publish(candidate(i))
    got: list[str] = []
    while len(got) < 5:
        got += [d.message.event_id for d in await bus.consume(IncidentCandidate, "g", "c", count=2)]
    assert got == [f"ev-{i}" for i in range(5)]


async def test_each_group_gets_every_message_and_consumers_share(bus: Bus) -> None:
    """Two groups each get all messages; two consumers in one group split them."""
    for i in range(4):
        await bus.publish(candidate(i))
    a = await bus.consume(IncidentCandidate, "ga", "x", count=10)
    b1 = await bus.consume(IncidentCandidate, "gb", "y1", count=2)
    b2 = await bus.consume(IncidentCandidate, "gb", "y2", count=10)
    assert len(a) == 4
    assert sorted(d.message.event_id for d in b1 + b2) == [f"ev-{i}" for i in range(4)]
    assert not {d.id for d in b1} & {d.id for d in b2}


async def test_unacked_message_is_claimed_by_another_consumer(bus: Bus) -> None:
    """A message a consumer took but never acked (it died) is taken over, then not after ack."""
    await bus.publish(candidate(1))
    (d,) = await bus.consume(IncidentCandidate, "g", "dead", block_s=1)
    assert await bus.consume(IncidentCandidate, "g", "live", block_s=0.2) == []
    claimed = await bus.claim_stale(IncidentCandidate, "g", "live", min_idle_s=0)
    assert [c.message.event_id for c in claimed] == ["ev-1"]
    await bus.ack(IncidentCandidate, "g", [claimed[0].id])
    assert await bus.claim_stale(IncidentCandidate, "g", "live", min_idle_s=0) == []


async def test_recent_unacked_message_is_not_claimed(bus: Bus) -> None:
    """A delivery younger than min_idle_s stays with its consumer."""
    await bus.publish(candidate(1))
    await bus.consume(IncidentCandidate, "g", "busy", block_s=1)
    assert await bus.claim_stale(IncidentCandidate, "g", "other", min_idle_s=60) == []


async def test_consume_blocks_until_a_message_arrives(bus: Bus) -> None:
    """A blocked consume returns as soon as something is published."""
    task = asyncio.create_task(bus.consume(IncidentCandidate, "g", "c", block_s=5))
    await asyncio.sleep(0.1)
    await bus.publish(candidate(3))
    got = await asyncio.wait_for(task, 5)
    assert [d.message.event_id for d in got] == ["ev-3"]


async def test_consume_times_out_empty(bus: Bus) -> None:
    """With nothing published, consume returns an empty list after block_s."""
    assert await bus.consume(IncidentCandidate, "g", "c", block_s=0.2) == []


async def test_broadcast_reaches_every_listener(bus: Bus) -> None:
    """A live message reaches all current listeners of its topic, and only that topic."""
    ev = IncidentEvent(kind="incident.created", incident={"id": "inc_1", "type": "person_down"})
    async with bus.listen(IncidentEvent) as l1, bus.listen(IncidentEvent) as l2, \
            bus.listen(CameraHealth) as other:
        await bus.broadcast(ev)
        got1 = await asyncio.wait_for(anext(l1), 5)
        got2 = await asyncio.wait_for(anext(l2), 5)
        assert got1 == ev and got2 == ev
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(other), 0.3)


async def test_broadcast_without_listeners_is_not_kept(bus: Bus) -> None:
    """Live fan-out is at-most-once: a listener that joins later does not get old messages."""
    await bus.broadcast(CameraHealth(camera_id="c", status="online"))
    async with bus.listen(CameraHealth) as later:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(later), 0.3)


def test_message_rejects_unknown_fields() -> None:
    """Bus messages are strict: an unknown field is an error, not silently dropped."""
    with pytest.raises(ValueError):
        IncidentCandidate.model_validate({**candidate(1).model_dump(), "colour": "red"})


@pytest.mark.redis
async def test_redis_hands_back_its_own_live_message_and_parses_another_hubs(
        redis_prefix: str) -> None:
    """Two hubs on one Redis: each listener gets every live message in Redis's order; the
    sender's own comes back as the message it sent, with the sender's model (no parse),
    the other hub's is parsed from its bytes (equal, without a model)."""
    from hub.bus.redis import RedisBus
    from tests.conftest import REDIS_URL

    a, b = RedisBus(REDIS_URL, prefix=redis_prefix), RedisBus(REDIS_URL, prefix=redis_prefix)
    await a.start()
    await b.start()
    try:
        mine = IncidentEvent(kind="incident.created", incident={"id": "inc_a", "type": "x"})
        mine._model = model = object()
        theirs = IncidentEvent(kind="incident.updated", incident={"id": "inc_b", "type": "x"},
                               action="dispatch")
        theirs._model = object()
        async with a.listen(IncidentEvent) as la, b.listen(IncidentEvent) as lb:
            await a.broadcast(mine)
            await b.broadcast(theirs)
            got_a = [await asyncio.wait_for(anext(la), 5) for _ in range(2)]
            got_b = [await asyncio.wait_for(anext(lb), 5) for _ in range(2)]
        sent = [mine.model_dump(), theirs.model_dump()]
        assert [m.model_dump() for m in got_a] == [m.model_dump() for m in got_b] == sent
        assert got_a[0] is mine and got_a[0].sent_model is model
        assert got_a[1] is not theirs and got_a[1].sent_model is None
        assert got_b[1] is theirs and got_b[0].sent_model is None
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_redis_listeners_of_a_hub_share_one_subscription(redis_prefix: str) -> None:
    """A hub's listeners of one topic share one Redis subscription (each message is read
    once) and each still gets every message; it ends with the last listener, and a new
    listener subscribes again."""
    from hub.bus.redis import RedisBus
    from tests.conftest import REDIS_URL

    bus = RedisBus(REDIS_URL, prefix=redis_prefix)
    await bus.start()
    channel = bus._channel(IncidentEvent.topic)

    async def subscribers() -> int:
        return int(dict(await bus.redis.pubsub_numsub(channel))[channel.encode()])

    try:
        evs = [IncidentEvent(kind="incident.created", incident={"id": f"inc_{i}", "type": "x"})
               for i in range(3)]
        async with bus.listen(IncidentEvent) as l1:
            async with bus.listen(IncidentEvent) as l2, bus.listen(IncidentEvent) as l3:
                assert await subscribers() == 1
                for ev in evs[:2]:
                    await bus.broadcast(ev)
                for lis in (l1, l2, l3):
                    assert [await asyncio.wait_for(anext(lis), 5) for _ in range(2)] == evs[:2]
            assert await subscribers() == 1  # l1 still listens
            await bus.broadcast(evs[2])
            assert await asyncio.wait_for(anext(l1), 5) == evs[2]
        assert await subscribers() == 0
        async with bus.listen(IncidentEvent) as again:
            assert await subscribers() == 1
            await bus.broadcast(evs[0])
            assert await asyncio.wait_for(anext(again), 5) == evs[0]
    finally:
        await bus.close()


@pytest.mark.redis
async def test_redis_garbage_entry_is_dead_lettered(redis_prefix: str) -> None:
    """A stream entry that is not a valid message is set aside; the good ones still arrive."""
    import redis.asyncio as aioredis

    from hub.bus.redis import RedisBus
    from tests.conftest import REDIS_URL

    bus = RedisBus(REDIS_URL, prefix=redis_prefix)
    await bus.start()
    raw = aioredis.from_url(REDIS_URL)
    stream = f"{redis_prefix}:stream:{IncidentCandidate.topic}"
    await raw.xadd(stream, {b"m": b"{not json"})
    await raw.xadd(stream, {b"other": b"field"})
    await bus.publish(candidate(2))
    got = await bus.consume(IncidentCandidate, "g", "c", count=10)
    assert [d.message.event_id for d in got] == ["ev-2"]
    assert bus.dead_letters == 2
    assert await raw.llen(f"{redis_prefix}:dead:{IncidentCandidate.topic}") == 2
    # dead-lettered entries are acked: nothing left to claim
    await bus.ack(IncidentCandidate, "g", [got[0].id])
    assert await bus.claim_stale(IncidentCandidate, "g", "c2", min_idle_s=0) == []
    await raw.aclose()
    await bus.close()


async def test_cancel_and_wait_stops_a_task_that_swallows_one_cancellation() -> None:
    """A task that loses the first cancel (as redis-py can under its own timeout) is
    cancelled again and stops; a failed task's error is logged, not raised."""
    import asyncio

    from hub.tasks import cancel_and_wait

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:
                    swallowed += 1
                    continue  # the lost cancellation
                raise

    async def broken() -> None:
        raise RuntimeError("boom")

    a, b = asyncio.create_task(stubborn()), asyncio.create_task(broken())
    await asyncio.sleep(0.01)
    await cancel_and_wait([a, b, None], repeat_s=0.05, limit_s=5)
    assert a.cancelled() and swallowed == 1
    assert b.done() and isinstance(b.exception(), RuntimeError)
