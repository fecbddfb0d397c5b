"""Outgoing notifications (webhooks, an SMS gateway) through a durable outbox.

An event becomes one ``outbox`` row per matching channel (``webhook:<name>``, or ``sms``
once per recipient), written in a transaction (the caller's own, with :meth:`Notifier.
rows_for` + :meth:`Notifier.insert_rows`, or :meth:`Notifier.enqueue`) before anything
is sent, so nothing is lost across a restart. :meth:`Notifier.run` claims due rows,
delivers them concurrently (bounded overall and per channel, each within ``timeout_s``),
marks them delivered, or retries with exponential backoff and jitter; after
``retry.max_attempts`` a row is dead (the dead-letter list, :meth:`Notifier.redeliver`).
Delivery is at least once: a receiver de-duplicates on ``X-GridHub-Delivery``; order is
not guaranteed (use ``at`` and ``incident.version``). A claimed row is leased (its
``next_at`` pushed ahead), so two hubs on one PostgreSQL never send it at the same time.

Webhook request: ``POST`` with the JSON body ``{"id", "event", "at", "incident", "data"}``
and the headers ``X-GridHub-Event``, ``X-GridHub-Delivery: <outbox id>``,
``X-GridHub-Timestamp: <unix seconds>`` and ``X-GridHub-Signature: sha256=<hex>``, the
HMAC-SHA256 with the webhook's secret over ``b"<timestamp>." + <raw body>``; a receiver
checks it with :func:`verify_signature` (which also refuses stale timestamps). 2xx is
delivered; 410 is dead at once; any other status, a timeout or a connection error is
retried. The SMS gateway gets the same semantics, with the body template filled in.

Exceptions::

    NotifyError
     +-- NotifyConfigError   a secret or token environment variable is missing (at start)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args
from urllib.parse import quote, urlsplit

import httpx
import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.engine import Connection

from hub.schema import outbox
from hub.tasks import cancel_and_wait

if TYPE_CHECKING:  # hub.config may import this module's config models: no runtime cycle
    from hub.config import Site
    from hub.models import Incident
    from hub.store import Store

log = logging.getLogger(__name__)

Event = Literal["incident.created", "incident.updated", "incident.escalated",
                "deadline.warning", "deadline.breached", "challenge.created",
                "challenge.overdue"]
EVENTS: tuple[Event, ...] = get_args(Event)
SMS_EVENTS: tuple[Event, ...] = ("incident.created", "incident.escalated", "deadline.breached",
                                 "challenge.overdue")
Sev = Literal["blue", "yellow", "orange", "red"]  # hub.config.Severity, without the import
RANK: dict[str, int] = {"blue": 0, "yellow": 1, "orange": 2, "red": 3}
SEV_ZH = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色"}
EVENT_ZH = {"incident.created": "新事件", "incident.updated": "事件更新",
            "incident.escalated": "事件上报", "deadline.warning": "即将超时",
            "deadline.breached": "已超时", "challenge.created": "收到质询",
            "challenge.overdue": "质询超时"}
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class NotifyError(Exception):
    """Notifications cannot work as configured."""


class NotifyConfigError(NotifyError):
    """A secret or token the configuration names is not in the environment."""


def _http_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
        raise ValueError("must be an http:// or https:// URL with a host")
    return v


HttpUrl = Annotated[str, AfterValidator(_http_url)]
Phone = Annotated[str, Field(pattern=r"^\+?[0-9]{3,20}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Strict):
    max_attempts: int = Field(8, ge=1, le=100, description="Attempts before a row is dead.")
    initial_s: float = Field(1.0, gt=0, description="Delay after the first failed attempt.")
    factor: float = Field(2.0, ge=1, description="Each further delay is this many times longer.")
    max_s: float = Field(300.0, gt=0, description="Longest delay between attempts.")
    jitter: float = Field(0.2, ge=0, le=1, description="Delays vary randomly by +- this fraction.")


class WebhookConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Channel name in logs.")
    url: HttpUrl = Field(description="Where to POST the events (http or https).")
    secret_env: str = Field(pattern=ENV_NAME, description="Env variable with the HMAC secret.")
    events: list[Event] = Field(default_factory=lambda: list(EVENTS),
                                description="Event kinds to send (default: all).")
    min_severity: Sev | None = Field(None, description="Only incidents this severe or more.")


class SmsRecipients(_Strict):
    by_severity: dict[Sev, list[Phone]] = Field(
        default_factory=dict, description="Severity -> phone numbers, for incidents of this "
        "severity or higher.")
    by_grid: dict[str, list[Phone]] = Field(
        default_factory=dict, description="Grid id -> phone numbers, for incidents in that "
        "grid node or below it.")


class SmsGatewayConfig(_Strict):
    url: HttpUrl = Field(description="The HTTP gateway (http or https).")
    method: Literal["POST"] = Field("POST", description="HTTP method.")
    content_type: Literal["application/json", "application/x-www-form-urlencoded",
                          "text/plain"] = Field("application/json", description="Body type.")
    body: str = Field('{"to": "{to}", "text": "{text}"}', description="Body template; {to} and "
                      "{text} are replaced, escaped for content_type.")
    token_env: str | None = Field(None, pattern=ENV_NAME,
                                  description="Env variable with a bearer token, if any.")
    recipients: SmsRecipients = Field(default_factory=SmsRecipients, description="Who gets SMS.")
    events: list[Event] = Field(
        default_factory=lambda: list(SMS_EVENTS), description="Event kinds to text.")
    min_severity: Sev | None = Field(None, description="Only incidents this severe or more.")

    @model_validator(mode="after")
    def _placeholders(self) -> SmsGatewayConfig:
        if "{to}" not in self.body or "{text}" not in self.body:
            raise ValueError("body must contain {to} and {text}")
        return self


class NotificationsConfig(_Strict):
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="Webhooks.")
    sms: SmsGatewayConfig | None = Field(None, description="SMS gateway; none by default.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retry schedule.")
    timeout_s: float = Field(10.0, gt=0, le=300, description="Longest time for one attempt.")
    concurrency: int = Field(16, ge=1, le=256, description="Deliveries in flight at once.")
    per_channel: int = Field(4, ge=1, le=64, description="Of those, at most this many per "
                             "channel, so one slow receiver cannot take every slot.")

    @model_validator(mode="after")
    def _unique_names(self) -> NotificationsConfig:
        names = [w.name for w in self.webhooks]
        if len(names) != len(set(names)):
            raise ValueError(f"webhook names must be unique: {names}")
        return self


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to (for metrics, logs and tests)."""

    id: int
    channel: str
    event: str
    incident_id: str | None
    state: Literal["delivered", "pending", "dead"]
    attempts: int
    error: str | None
    next_at: datetime | None


class _Failed(Exception):
    def __init__(self, error: str, *, permanent: bool = False) -> None:
        super().__init__(error)
        self.permanent = permanent


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-GridHub-Signature`` value: ``sha256=`` + HMAC-SHA256 of ``ts.body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, timestamp: str, body: bytes, header: str,
                     tolerance_s: float = 300, now: float | None = None) -> bool:
    """True when ``header`` (``X-GridHub-Signature``, possibly several comma-separated
    ``sha256=`` values) signs ``body`` at ``timestamp`` within ``tolerance_s`` of ``now``."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    want = sign(secret, timestamp, body)
    return any(hmac.compare_digest(want, v.strip()) for v in header.split(","))


def backoff_s(retry: RetryConfig, attempts: int, rand: float) -> float:
    """Delay after ``attempts`` failed attempts; ``rand`` in [0, 1) picks the jitter."""
    base = min(retry.max_s, retry.initial_s * retry.factor ** (attempts - 1))
    return min(retry.max_s, base * (1 - retry.jitter + 2 * retry.jitter * rand))


def sms_text(event: str, incident: Incident, site: Site | None = None) -> str:
    """A short, Chinese-first text: severity, event, type name, place, incident id."""
    names = {t.id: t.name for t in site.site.incident_types} if site else {}
    place = incident.grid_name or incident.camera_name or incident.grid_id or "未知地点"
    head = site.site.name if site else "GridHub"
    return (f"【{head}】{SEV_ZH.get(incident.severity, incident.severity)}"
            f"{EVENT_ZH.get(event, event)}：{names.get(incident.type, incident.type)}，"
            f"{place}，编号{incident.id}")


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _json(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _fill(template: str, content_type: str, to: str, text: str) -> str:
    def esc(v: str) -> str:
        if content_type == "application/json":
            return json.dumps(v, ensure_ascii=False)[1:-1]
        return quote(v, safe="") if content_type.endswith("urlencoded") else v
    return template.replace("{to}", esc(to)).replace("{text}", esc(text))


def _secrets(cfg: NotificationsConfig, environ: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    missing: list[str] = []
    wanted = [(f"webhook:{w.name}", f"webhooks[{w.name}].secret_env", w.secret_env)
              for w in cfg.webhooks]
    if cfg.sms is not None and cfg.sms.token_env:
        wanted.append(("sms", "sms.token_env", cfg.sms.token_env))
    for channel, key, var in wanted:
        if environ.get(var):
            found[channel] = environ[var]
        else:
            missing.append(f"notifications.{key}: environment variable {var} is not set")
    if missing:
        raise NotifyConfigError("; ".join(missing))
    return found


class Notifier:
    """Writes events to the outbox and, while :meth:`run` runs, delivers them."""

    def __init__(self, config: NotificationsConfig, store: Store, *, site: Site | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 environ: Mapping[str, str] | None = None,
                 rand: Callable[[], float] = random.random,
                 on_result: Callable[[Outcome], None] | None = None, poll_s: float = 10.0) -> None:
        self.config, self.store, self.site = config, store, site
        self._secrets = _secrets(config, os.environ if environ is None else environ)
        self._hooks = {f"webhook:{w.name}": w for w in config.webhooks}
        self._clock, self._rand, self._on_result, self._poll_s = clock, rand, on_result, poll_s
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[int, str] = {}  # outbox id -> channel

    # --- writing ------------------------------------------------------------

    def rows_for(self, event: str, incident: Incident | None,
                 data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The outbox rows (pending, due now) for one event; pure, writes nothing."""
        if event not in EVENTS:
            raise ValueError(f"unknown notification event {event!r}; known: {', '.join(EVENTS)}")
        now = _iso(self._clock())
        sev = RANK[incident.severity] if incident is not None else None

        def wants(events: Sequence[str], min_sev: str | None) -> bool:
            return event in events and (min_sev is None or sev is None or sev >= RANK[min_sev])

        base = {"event": event, "incident_id": incident.id if incident else None,
                "created_at": now, "state": "pending", "attempts": 0, "next_at": now}
        doc = {"event": event, "at": now,
               "incident": incident.model_dump(mode="json") if incident else None,
               "data": dict(data)}
        body = json.dumps(doc, ensure_ascii=False, default=_json)
        rows = [{**base, "channel": f"webhook:{w.name}", "payload": body}
                for w in self.config.webhooks if wants(w.events, w.min_severity)]
        sms = self.config.sms
        if sms is not None and incident is not None and wants(sms.events, sms.min_severity):
            text = sms_text(event, incident, self.site)
            for to in self._phones(sms.recipients, incident):
                rows.append({**base, "channel": "sms", "payload": json.dumps(
                    {"to": to, "text": text}, ensure_ascii=False)})
        return rows

    def _phones(self, rcpt: SmsRecipients, incident: Incident) -> list[str]:
        out: list[str] = []
        for sev, phones in rcpt.by_severity.items():
            if RANK[incident.severity] >= RANK[sev]:
                out += phones
        grids = [incident.grid_id] if incident.grid_id else []
        if self.site is not None and incident.grid_id:
            grids = self.site.grid_ancestors(incident.grid_id) or grids
        for g in grids:
            out += rcpt.by_grid.get(g, [])
        return list(dict.fromkeys(out))

    @staticmethod
    def insert_rows(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert rows from :meth:`rows_for` in the caller's transaction; their ids. Call
        :meth:`wake` once it has committed."""
        return [int(conn.execute(sa.insert(outbox).values(**r).returning(outbox.c.id))
                    .scalar_one()) for r in rows]

    async def enqueue(self, event: str, incident: Incident | None,
                      data: Mapping[str, Any]) -> list[int]:
        """Write the event's rows in one transaction and wake the delivery loop."""
        rows = self.rows_for(event, incident, data)
        if not rows:
            return []
        ids = await self.store.tx(lambda c: self.insert_rows(c, rows))
        log.info("notify: %s for incident %s queued as outbox %s", event,
                 incident.id if incident else None, ids)
        self.wake()
        return ids

    def wake(self) -> None:
        """Look for due rows now (safe from any thread)."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or loop is here:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    # --- the dead-letter list ---------------------------------------------------

    async def dead_letters(self) -> list[dict[str, Any]]:
        """Dead rows, oldest first, with their payload and last error."""
        o = outbox.c
        rows = await self.store.read(lambda c: c.execute(
            sa.select(outbox).where(o.state == "dead").order_by(o.id)).mappings().all())
        return [{**r, "payload": json.loads(r["payload"])} for r in rows]

    async def redeliver(self, outbox_id: int) -> bool:
        """Move a dead row back to pending with fresh attempts; False if it is not dead."""
        o, now = outbox.c, _iso(self._clock())
        n = await self.store.tx(lambda c: c.execute(
            sa.update(outbox).where(o.id == outbox_id, o.state == "dead")
            .values(state="pending", attempts=0, next_at=now)).rowcount)
        if n:
            log.info("notify: outbox %d queued again", outbox_id)
            self.wake()
        return bool(n)

    async def prune(self, before: datetime) -> int:
        """Delete rows delivered before ``before``; how many."""
        o, cut = outbox.c, _iso(before)
        return int(await self.store.tx(lambda c: c.execute(sa.delete(outbox).where(
            o.state == "delivered", o.delivered_at < cut)).rowcount))

    async def counts(self) -> dict[str, int]:
        """Rows by state (for health pages)."""
        o = outbox.c
        rows = await self.store.read(lambda c: c.execute(
            sa.select(o.state, sa.func.count()).group_by(o.state)).all())
        return {str(s): int(n) for s, n in rows}

    # --- delivering ---------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled; in-flight deliveries are cancelled and released."""
        self._loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        pause = 0.5
        async with httpx.AsyncClient(timeout=self.config.timeout_s, trust_env=False,
                                     headers={"User-Agent": "GridHub"}) as client:
            try:
                while True:
                    self._wake.clear()
                    try:
                        wait = await self._claim_and_start(client, tasks)
                        pause = 0.5
                    except Exception as err:  # the store is down: retry, never stop
                        log.error("notify: claiming due rows failed: %s", err)
                        wait, pause = pause, min(pause * 2, self._poll_s)
                    try:
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
            finally:
                self._loop = None
                await cancel_and_wait(tasks)
                held = list(self._inflight)
                self._inflight.clear()
                if held:
                    await asyncio.shield(self._release(held))

    async def _claim_and_start(self, client: httpx.AsyncClient,
                               tasks: set[asyncio.Task[None]]) -> float:
        now = self._clock()
        busy = Counter(self._inflight.values())
        inflight = frozenset(self._inflight)
        rows, earliest = await self.store.tx(lambda c: self._claim(c, now, busy, inflight))
        for row in rows:
            self._inflight[row["id"]] = row["channel"]
            task = asyncio.create_task(self._attempt(client, row), name=f"outbox-{row['id']}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if earliest is None:
            return self._poll_s
        return min(self._poll_s, max(0.0, (earliest - self._clock()).total_seconds()))

    def _claim(self, conn: Connection, now: datetime, busy: Counter[str],
               inflight: frozenset[int]) -> tuple[list[dict[str, Any]], datetime | None]:
        """Lease due rows, within the overall and per-channel bounds; and when the next
        row of a channel with room falls due."""
        o, now_s = outbox.c, _iso(now)
        lease = _iso(now + timedelta(seconds=2 * self.config.timeout_s + 5))
        due = sa.and_(o.state == "pending", o.next_at <= now_s, o.id.not_in(inflight))
        room = self.config.concurrency - sum(busy.values())
        claimed: list[dict[str, Any]] = []
        channels = conn.execute(sa.select(o.channel).where(due).group_by(o.channel)
                                .order_by(sa.func.min(o.next_at))).scalars().all()
        for ch in channels:
            n = min(self.config.per_channel - busy[ch], room - len(claimed))
            if n <= 0:
                continue
            ids = conn.execute(sa.select(o.id).where(due, o.channel == ch)
                               .order_by(o.next_at, o.id).limit(n)).scalars().all()
            got = conn.execute(sa.update(outbox).where(o.id.in_(ids), o.state == "pending",
                                                       o.next_at <= now_s)
                               .values(next_at=lease).returning(*outbox.c)).mappings().all()
            claimed += sorted((dict(r) for r in got), key=lambda r: r["id"])
            busy[ch] += len(got)
        if sum(busy.values()) >= self.config.concurrency:
            return claimed, None  # a finished delivery wakes the loop
        full = [ch for ch, k in busy.items() if k >= self.config.per_channel]
        taken = inflight | {r["id"] for r in claimed}
        nxt = conn.execute(sa.select(sa.func.min(o.next_at)).where(
            o.state == "pending", o.channel.not_in(full), o.id.not_in(taken))).scalar()
        return claimed, datetime.fromisoformat(nxt) if nxt else None

    async def _release(self, ids: list[int]) -> None:
        o, now = outbox.c, _iso(self._clock())
        try:
            await self.store.tx(lambda c: c.execute(sa.update(outbox).where(
                o.id.in_(ids), o.state == "pending").values(next_at=now)))
        except Exception as err:  # the lease runs out by itself
            log.warning("notify: releasing outbox %s failed: %s", ids, err)

    async def _attempt(self, client: httpx.AsyncClient, row: dict[str, Any]) -> None:
        rid, channel = int(row["id"]), str(row["channel"])
        error: _Failed | None = None
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await self._send(client, row)
        except asyncio.CancelledError:
            raise  # run() is stopping: it releases the lease
        except TimeoutError:
            error = _Failed(f"timeout after {self.config.timeout_s:g} s")
        except _Failed as err:
            error = err
        except Exception as err:  # connection errors, and anything else: try again later
            error = _Failed(f"{type(err).__name__}: {err}".rstrip(": "))
        try:
            done = await self.store.tx(lambda c: self._record(c, row, error))
        except Exception as err:  # the lease runs out and it is tried again
            log.error("outbox %d %s: recording the attempt failed: %s", rid, channel, err)
            return
        finally:
            self._inflight.pop(rid, None)
            self._wake.set()
        log.log(logging.INFO if done.state == "delivered" else logging.WARNING,
                "outbox %d %s (%s, incident %s): %s after attempt %d%s", rid, channel,
                done.event, done.incident_id, done.state, done.attempts,
                f": {done.error}" if done.error else "")
        if self._on_result is not None:
            self._on_result(done)

    async def _send(self, client: httpx.AsyncClient, row: Mapping[str, Any]) -> None:
        rid, channel = int(row["id"]), str(row["channel"])
        headers = {"X-GridHub-Event": str(row["event"]), "X-GridHub-Delivery": str(rid)}
        if channel in self._hooks:
            body = json.dumps({"id": rid, **json.loads(row["payload"])},
                              ensure_ascii=False).encode()
            ts = str(int(self._clock().timestamp()))
            headers.update({"Content-Type": "application/json", "X-GridHub-Timestamp": ts,
                            "X-GridHub-Signature": sign(self._secrets[channel], ts, body)})
            url = self._hooks[channel].url
        elif channel == "sms" and self.config.sms is not None:
            sms, msg = self.config.sms, json.loads(row["payload"])
            body = _fill(sms.body, sms.content_type, msg["to"], msg["text"]).encode()
            headers["Content-Type"] = sms.content_type + "; charset=utf-8"
            if "sms" in self._secrets:
                headers["Authorization"] = f"Bearer {self._secrets['sms']}"
            url = sms.url
        else:
            raise _Failed(f"channel {channel} is not configured any more", permanent=True)
        resp = await client.post(url, content=body, headers=headers)
        if resp.status_code == 410:
            raise _Failed("HTTP 410 Gone: the receiver does not want it", permanent=True)
        if not 200 <= resp.status_code < 300:
            raise _Failed(f"HTTP {resp.status_code}: {resp.text[:200]}".rstrip(": "))

    def _record(self, conn: Connection, row: Mapping[str, Any], error: _Failed | None) -> Outcome:
        o, now = outbox.c, self._clock()
        rid, attempts = int(row["id"]), int(row["attempts"]) + 1
        state: Literal["delivered", "pending", "dead"]
        nxt: datetime | None = None
        if error is None:
            state, values = "delivered", {"delivered_at": _iso(now), "last_error": None}
        elif error.permanent or attempts >= self.config.retry.max_attempts:
            state, values = "dead", {"last_error": str(error)}
        else:
            nxt = now + timedelta(seconds=backoff_s(self.config.retry, attempts, self._rand()))
            state, values = "pending", {"last_error": str(error), "next_at": _iso(nxt)}
        conn.execute(sa.update(outbox).where(o.id == rid, o.state == "pending")
                     .values(state=state, attempts=attempts, **values))
        return Outcome(rid, str(row["channel"]), str(row["event"]), row["incident_id"], state,
                       attempts, str(error) if error else None, nxt)
