"""Outgoing notifications: the outbox on SQLite and the real PostgreSQL, delivered to a real
HTTP receiver (Starlette on uvicorn, 127.0.0.1, port 0) that fails on purpose, with signed
webhooks, backoff, dead letters, redelivery, restarts and an SMS gateway.

Retry delays are checked on an injected clock the tests move forward; the receiver's
"hang" answers only when the test ends, so the client's own timeout is what ends it."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.config import Site, load_config
from hub.models import Incident
from hub.notify import (
    NotificationsConfig,
    Notifier,
    NotifyConfigError,
    Outcome,
    RetryConfig,
    backoff_s,
    sign,
    verify_signature,
)
from hub.schema import outbox
from hub.store import Store
from hub.tasks import cancel_and_wait
from tests.conftest import DEMO, serve_app

SECRETS = {"ops": "ops-secret", "slow": "slow-secret", "fast": "fast-secret"}
ENV = {"OPS_SECRET": "ops-secret", "SLOW_SECRET": "slow-secret", "FAST_SECRET": "fast-secret",
       "SMS_TOKEN": "sms-token"}
WAIT_S = 15.0


class Clock:
    """A clock the test moves forward; starts at the real time (signatures stay fresh)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    signed: bool


class Receiver:
    """A real HTTP receiver; each path answers by its script (status codes, or "hang":
    wait until the test ends); the last step repeats. Signatures are checked on arrival."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.scripts: dict[str, list[int | str]] = defaultdict(lambda: [200])
        self.hits: dict[str, list[Hit]] = defaultdict(list)
        self.arrived = asyncio.Condition()
        self.release = asyncio.Event()
        self.url = ""
        self.app = Starlette(routes=[Route("/{name}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        name, body = request.path_params["name"], await request.body()
        h = request.headers
        signed = name in SECRETS and verify_signature(
            SECRETS[name], h.get("x-gridhub-timestamp", ""), body,
            h.get("x-gridhub-signature", ""), now=self.clock().timestamp())
        async with self.arrived:
            self.hits[name].append(Hit(dict(h), body, signed))
            self.arrived.notify_all()
        script = self.scripts[name]
        step = script.pop(0) if len(script) > 1 else script[0]
        if step == "hang":
            await self.release.wait()
            step = 200
        return Response(status_code=int(step), content=f"answer {step}")

    async def wait_hits(self, name: str, n: int) -> list[Hit]:
        async with asyncio.timeout(WAIT_S), self.arrived:
            await self.arrived.wait_for(lambda: len(self.hits[name]) >= n)
        return self.hits[name]


class Outcomes:
    """Collects the notifier's delivery outcomes for the test to wait on."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Outcome] = asyncio.Queue()

    def __call__(self, outcome: Outcome) -> None:
        self.queue.put_nowait(outcome)

    async def next(self) -> Outcome:
        return await asyncio.wait_for(self.queue.get(), WAIT_S)

    async def until(self, pred: Callable[[Outcome], bool], n: int = 1) -> list[Outcome]:
        got: list[Outcome] = []
        while len([o for o in got if pred(o)]) < n:
            got.append(await self.next())
        return got


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def receiver(clock: Clock) -> AsyncIterator[Receiver]:
    """The receiver on a real uvicorn; hanging answers are released at the end."""
    rec = Receiver(clock)
    async with serve_app(rec.app) as server:
        rec.url = server.url
        try:
            yield rec
        finally:
            rec.release.set()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open SQLite store."""
    s = Store(tmp_path / "hub.sqlite3")
    await s.open()
    yield s
    await s.close()


@pytest.fixture(scope="module")
def site() -> Site:
    return load_config(DEMO)


@asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[Notifier]:
    task = asyncio.create_task(notifier.run())
    try:
        yield notifier
    finally:
        await cancel_and_wait([task])


def config(rec: Receiver, *hooks: str, **kw: Any) -> NotificationsConfig:
    return NotificationsConfig.model_validate({"webhooks": [
        {"name": h, "url": f"{rec.url}/{h}", "secret_env": f"{h.upper()}_SECRET"} for h in hooks
    ], **kw})


def incident(**kw: Any) -> Incident:
    t = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    base: dict[str, Any] = dict(
        id="inc_1", type="person_down", state="new", severity="red", created_at=t,
        updated_at=t, started_at=t, last_seen_at=t, grid_id="zz-jinshui-jingba-c1-g01",
        grid_name="黄河路社区 第一网格", camera_name="经八路口")
    return Incident(**{**base, **kw})


async def rows(store: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in await store.read(lambda c: c.execute(
        sa.select(outbox).order_by(outbox.c.id)).mappings().all())]


async def test_retried_with_backoff_until_delivered(
        store: Store, receiver: Receiver, clock: Clock) -> None:
    """A 500, then a timeout, then 200: retried after growing delays, then delivered, every
    attempt signed with the same delivery id and body."""
    receiver.scripts["ops"] = [500, "hang", 200]
    retry = {"initial_s": 10, "factor": 2, "jitter": 0.1, "max_attempts": 5}
    outcomes = Outcomes()
    n = Notifier(config(receiver, "ops", retry=retry, timeout_s=0.3), store, clock=clock,
                 environ=ENV, on_result=outcomes)
    async with running(n):
        [oid] = await n.enqueue("incident.created", incident(), {"by": "detector"})
        first = await outcomes.next()
        assert (first.id, first.state, first.attempts) == (oid, "pending", 1)
        assert first.error is not None and first.error.startswith("HTTP 500")
        assert first.next_at is not None and 9 <= (first.next_at - clock()).total_seconds() <= 11
        clock.advance(11)
        n.wake()
        second = await outcomes.next()
        assert (second.state, second.attempts) == ("pending", 2)
        assert second.error == "timeout after 0.3 s"
        assert second.next_at is not None
        assert 18 <= (second.next_at - clock()).total_seconds() <= 22
        clock.advance(22)
        n.wake()
        third = await outcomes.next()
        assert (third.state, third.attempts, third.error) == ("delivered", 3, None)
    hits = receiver.hits["ops"]
    assert len(hits) == 3 and all(h.signed for h in hits)
    assert {h.headers["x-gridhub-delivery"] for h in hits} == {str(oid)}
    assert {h.body for h in hits} == {hits[0].body}
    assert hits[0].headers["x-gridhub-event"] == "incident.created"
    assert hits[0].headers["content-type"] == "application/json"
    body = json.loads(hits[0].body)
    assert list(body) == ["id", "event", "at", "incident", "data"]
    assert (body["id"], body["event"], body["incident"]["id"], body["data"]) == (
        oid, "incident.created", "inc_1", {"by": "detector"})
    [row] = await rows(store)
    assert (row["state"], row["attempts"], row["last_error"]) == ("delivered", 3, None)
    assert row["delivered_at"] is not None


async def test_always_failing_receiver_is_dead_lettered_then_redelivered(
        db_url: str, receiver: Receiver) -> None:
    """After max_attempts failures the row is dead with its last error; redeliver sends it
    again (once the receiver works), only dead rows can be redelivered, and delivered rows
    can be pruned."""
    receiver.scripts["ops"] = [503]
    store = Store(db_url)
    await store.open()
    outcomes = Outcomes()
    retry = {"initial_s": 0.01, "max_s": 0.05, "max_attempts": 3}
    n = Notifier(config(receiver, "ops", retry=retry), store, environ=ENV, on_result=outcomes)
    async with running(n):
        [oid] = await n.enqueue("deadline.breached", incident(), {"deadline": "resolve"})
        got = await outcomes.until(lambda o: o.state == "dead")
        assert [(o.state, o.attempts) for o in got] == [("pending", 1), ("pending", 2),
                                                         ("dead", 3)]
        [dead] = await n.dead_letters()
        assert (dead["id"], dead["attempts"], dead["channel"]) == (oid, 3, "webhook:ops")
        assert dead["last_error"] == "HTTP 503: answer 503"
        assert dead["payload"]["data"] == {"deadline": "resolve"}
        assert len(receiver.hits["ops"]) == 3
        receiver.scripts["ops"] = [200]
        assert await n.redeliver(oid)
        again = await outcomes.next()
        assert (again.id, again.state, again.attempts) == (oid, "delivered", 1)
        assert await n.dead_letters() == []
        assert not await n.redeliver(oid)
        assert await n.counts() == {"delivered": 1}
        assert await n.prune(datetime.now(UTC) - timedelta(hours=1)) == 0
        assert await n.prune(datetime.now(UTC) + timedelta(seconds=1)) == 1
        assert await n.counts() == {}
    await store.close()


async def test_gone_is_dead_at_once(store: Store, receiver: Receiver) -> None:
    """A 410 answer dead-letters the row on the first attempt."""
    receiver.scripts["ops"] = [410]
    outcomes = Outcomes()
    n = Notifier(config(receiver, "ops"), store, environ=ENV, on_result=outcomes)
    async with running(n):
        await n.enqueue("incident.created", incident(), {})
        o = await outcomes.next()
    assert (o.state, o.attempts) == ("dead", 1) and o.error is not None and "410" in o.error
    assert len(receiver.hits["ops"]) == 1


async def test_rows_survive_a_restart(db_url: str, receiver: Receiver) -> None:
    """Rows written before a stop (one queued while stopped, one cut off mid-delivery) are
    delivered by a new Notifier on a reopened store, without waiting out the lease."""
    receiver.scripts["ops"] = ["hang", 200]
    cfg = config(receiver, "ops", timeout_s=60)
    store = Store(db_url)
    await store.open()
    first = Notifier(cfg, store, environ=ENV)
    async with running(first):
        [cut] = await first.enqueue("incident.created", incident(), {})
        await receiver.wait_hits("ops", 1)
    [queued] = await first.enqueue("incident.updated", incident(state="confirmed"), {})
    assert [(r["state"], r["attempts"]) for r in await rows(store)] == [("pending", 0)] * 2
    await store.close()

    store = Store(db_url)
    await store.open()
    outcomes = Outcomes()
    second = Notifier(cfg, store, environ=ENV, on_result=outcomes)
    async with running(second):
        done = await outcomes.until(lambda o: o.state == "delivered", 2)
    assert {o.id for o in done} == {cut, queued}
    hits = await receiver.wait_hits("ops", 3)
    assert [h.headers["x-gridhub-delivery"] for h in hits].count(str(cut)) == 2
    await store.close()


async def test_slow_receiver_does_not_delay_another(store: Store, receiver: Receiver) -> None:
    """While one webhook hangs (holding only its own channel's slot), another gets every
    event delivered."""
    receiver.scripts["slow"] = ["hang"]
    outcomes = Outcomes()
    n = Notifier(config(receiver, "slow", "fast", timeout_s=60, per_channel=1), store,
                 environ=ENV, on_result=outcomes)
    async with running(n):
        for state in ("new", "confirmed", "dispatched"):
            await n.enqueue("incident.updated", incident(state=state), {})
        fast = await outcomes.until(lambda o: o.channel == "webhook:fast", 3)
        assert all(o.channel == "webhook:fast" and o.state == "delivered" for o in fast)
        assert len(receiver.hits["slow"]) == 1 and not receiver.release.is_set()
    assert all(h.signed for h in receiver.hits["fast"] + receiver.hits["slow"])


async def test_rows_written_in_the_callers_transaction(db_url: str, receiver: Receiver) -> None:
    """rows_for + insert_rows join the caller's transaction: rolled back with it, or
    committed and then delivered after wake()."""
    store = Store(db_url)
    await store.open()
    outcomes = Outcomes()
    n = Notifier(config(receiver, "ops"), store, environ=ENV, on_result=outcomes)
    rows_ = n.rows_for("challenge.created", incident(), {"challenge": "ch_1"})

    def failing(conn: sa.Connection) -> None:
        n.insert_rows(conn, rows_)
        raise RuntimeError("the caller's own write failed")

    with pytest.raises(RuntimeError):
        await store.tx(failing)
    assert await rows(store) == []
    async with running(n):
        ids = await store.tx(lambda c: n.insert_rows(c, rows_))
        n.wake()
        o = await outcomes.next()
    assert (o.id, o.state, o.event) == (ids[0], "delivered", "challenge.created")
    await store.close()


@pytest.mark.parametrize(("content_type", "template", "parse"), [
    ("application/json", '{"to": "{to}", "text": "{text}"}', json.loads),
    ("application/x-www-form-urlencoded", "phone={to}&msg={text}",
     lambda b: {k.replace("phone", "to").replace("msg", "text"): v[0]
                for k, v in parse_qs(b.decode()).items()}),
])
async def test_sms_gateway(store: Store, receiver: Receiver, site: Site, content_type: str,
                           template: str, parse: Callable[[bytes], dict[str, str]]) -> None:
    """One row per recipient (by severity and by grid, ancestors included, no duplicates),
    a short Chinese text, the bearer token, retried after a failure like webhooks."""
    receiver.scripts["sms"] = [500, 200]
    cfg = NotificationsConfig.model_validate({
        "retry": {"initial_s": 0.01},
        "sms": {"url": f"{receiver.url}/sms", "token_env": "SMS_TOKEN", "body": template,
                "content_type": content_type,
                "recipients": {"by_severity": {"orange": ["13800000001"], "red": ["13800000002"]},
                               "by_grid": {"zz-jinshui-jingba": ["13800000003", "13800000001"],
                                           "zz-other": ["13800000009"]}}}})
    outcomes = Outcomes()
    n = Notifier(cfg, store, site=site, environ=ENV, on_result=outcomes)
    async with running(n):
        assert await n.enqueue("incident.updated", incident(), {}) == []  # not an SMS event
        ids = await n.enqueue("incident.created", incident(), {})
        assert len(ids) == 3
        await outcomes.until(lambda o: o.state == "delivered", 3)
    hits = receiver.hits["sms"]
    assert len(hits) == 4
    assert {h.headers["authorization"] for h in hits} == {"Bearer sms-token"}
    assert all(h.headers["content-type"].startswith(content_type) for h in hits)
    msgs = [parse(h.body) for h in hits]
    assert {m["to"] for m in msgs} == {"13800000001", "13800000002", "13800000003"}
    assert msgs[0]["text"] == ("【经八路街道指挥中心 (demo)】红色新事件：人员倒地，"
                               "黄河路社区 第一网格，编号inc_1")


def test_rows_for_filters_by_event_and_severity(tmp_path: Path) -> None:
    """A webhook gets only its event kinds and severities; an unknown event is refused."""
    cfg = NotificationsConfig.model_validate({"webhooks": [
        {"name": "all", "url": "http://127.0.0.1:9/a", "secret_env": "OPS_SECRET"},
        {"name": "red", "url": "https://127.0.0.1:9/r", "secret_env": "OPS_SECRET",
         "min_severity": "red", "events": ["incident.created"]}]})
    n = Notifier(cfg, Store(tmp_path / "unused.sqlite3"), environ=ENV)

    def channels(event: str, inc: Incident | None) -> list[str]:
        return [r["channel"] for r in n.rows_for(event, inc, {})]

    assert channels("incident.created", incident()) == ["webhook:all", "webhook:red"]
    assert channels("incident.created", incident(severity="orange")) == ["webhook:all"]
    assert channels("incident.updated", incident()) == ["webhook:all"]
    assert channels("incident.created", None) == ["webhook:all", "webhook:red"]
    with pytest.raises(ValueError, match="unknown notification event"):
        n.rows_for("incident.exploded", incident(), {})


@pytest.mark.parametrize(("doc", "environ", "error"), [
    ({"webhooks": [{"name": "ops", "url": "http://h/x", "secret_env": "NOPE"}]}, {},
     "notifications.webhooks[ops].secret_env: environment variable NOPE is not set"),
    ({"sms": {"url": "http://h/x", "token_env": "SMS_TOKEN"}}, {"SMS_TOKEN": ""},
     "notifications.sms.token_env: environment variable SMS_TOKEN is not set"),
])
def test_missing_secret_is_a_config_error(tmp_path: Path, doc: dict[str, Any],
                                          environ: dict[str, str], error: str) -> None:
    """A secret or token variable missing (or empty) at start names the key and variable."""
    with pytest.raises(NotifyConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        Notifier(NotificationsConfig.model_validate(doc), Store(tmp_path / "x.sqlite3"),
                 environ=environ)


@pytest.mark.parametrize("doc", [
    {"webhooks": [{"name": "a", "url": "ftp://h/x", "secret_env": "S"}]},
    {"webhooks": [{"name": "a", "url": "http:///x", "secret_env": "S"}]},
    {"webhooks": [{"name": "a", "url": "http://h/x", "secret_env": "S", "colour": "red"}]},
    {"webhooks": [{"name": "a", "url": "http://h/x", "secret_env": "S", "events": ["boom"]}]},
    {"webhooks": [{"name": "a", "url": "http://h/x", "secret_env": "S"}] * 2},
    {"webhooks": [{"name": "a", "url": "http://h/x", "secret_env": "NOT-A-VAR"}]},
    {"sms": {"url": "http://h/x", "method": "GET"}},
    {"sms": {"url": "http://h/x", "body": "text={text}"}},
    {"sms": {"url": "http://h/x", "recipients": {"by_grid": {"g": ["call me"]}}}},
    {"retry": {"max_attempts": 0}},
])
def test_bad_config_is_refused(doc: dict[str, Any]) -> None:
    """Bad URLs, unknown keys, unknown events, duplicate names and bad values fail
    validation."""
    with pytest.raises(ValidationError):
        NotificationsConfig.model_validate(doc)


def test_signature_round_trip_and_refusals() -> None:
    """verify_signature accepts the signer's header (also among rotated ones) and refuses a
    changed body, a wrong secret, a stale or malformed timestamp."""
    body, ts = b'{"id":1}', "1795000000"
    header = sign("s3cret", ts, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    now = 1795000100.0
    assert verify_signature("s3cret", ts, body, header, now=now)
    assert verify_signature(b"s3cret", ts, body, f"sha256=00, {header}", now=now)
    assert not verify_signature("s3cret", ts, body + b" ", header, now=now)
    assert not verify_signature("other", ts, body, header, now=now)
    assert not verify_signature("s3cret", ts, body, header, now=now + 301)
    assert not verify_signature("s3cret", "soon", body, header, now=now)


def test_backoff_grows_caps_and_jitters() -> None:
    """Delays double from initial_s up to max_s, varied by at most the jitter fraction."""
    r = RetryConfig(initial_s=1, factor=2, max_s=300, jitter=0.2)
    assert [backoff_s(r, k, 0.5) for k in (1, 2, 3, 9, 10, 20)] == [1, 2, 4, 256, 300, 300]
    assert backoff_s(r, 3, 0.0) == pytest.approx(3.2)
    assert backoff_s(r, 3, 0.999999) == pytest.approx(4.8)
    assert backoff_s(r, 12, 0.999999) == 300
