"""WebRTC ingest with aiortc: peer connections, ICE/DTLS settings, ``WhipSource``, sessions.

One :class:`WhipSession` per publishing patrol unit: an aiortc peer connection that
receives one video track (aiortc decodes it on its own thread) and an optional data
channel ``telemetry``. Its :class:`WhipSource` hands every decoded frame to the
detectors (``slot``) and encodes once to H.264 on a worker thread into ``packets`` (so
the live wall and the recorder treat a patrol unit like a camera).

Two contained adjustments of aiortc, both per peer connection, never process-wide:

* DTLS: aiortc's context offers only ECDHE-ECDSA cipher suites, so a peer with an RSA
  certificate (GStreamer 1.22 webrtcbin) fails with "no shared cipher" when aiortc is
  the DTLS client (its default as answerer). :class:`DtlsCertificate` subclasses
  ``RTCCertificate`` and widens the list with the ECDHE-RSA AEAD suites; our own key
  stays ECDSA P-256. :class:`WhipPeerConnection` installs it in place of the one aiortc
  generated (aiortc has no public hook: it keeps its certificates in a private list,
  checked at construction so an aiortc upgrade that moves it fails loudly).
* ICE: aioice binds host candidates on every interface except loopback, on random
  ports. Before gathering (between ``setRemoteDescription`` and
  ``setLocalDescription``) :func:`restrict_ice` wraps each gatherer's
  ``get_component_candidates`` to use only ``IceSettings.hosts`` and to bind in
  ``port_min..port_max``. STUN/TURN servers are used only when configured.

Errors::

    WebRtcError            the session could not start
     +-- UnitBusy          409 the unit already has a live session
     +-- TooManySessions   503 the hub's session limit is reached
     +-- NegotiationFailed 400 aiortc rejected the offer
     +-- NoCandidates      503 no ICE candidate could be bound (check ice_hosts/ports)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol, server_reflexive_candidate
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile
from OpenSSL import SSL

from ingest.source import Source
from ingest.whip import BitrateHints, count_candidates, munge_answer
from ingest.whip_source import WhipSource

log = logging.getLogger(__name__)

__all__ = [
    "DTLS_CIPHERS", "DtlsCertificate", "IceSettings", "NegotiationFailed", "NoCandidates",
    "TooManySessions", "UnitBusy", "WebRtcError", "WhipPeerConnection", "WhipSession",
    "WhipSessions", "WhipSource", "restrict_ice",
]

# aiortc's four ECDSA suites first (what browsers use), then ECDHE-RSA AEAD suites for
# peers with RSA certificates. All forward secret; no CBC-only RSA key exchange.
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
    b"ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
)
TELEMETRY_LABEL = "telemetry"
MAX_TELEMETRY_CHARS = 4096
TelemetryCallback = Callable[[str, str], None]
SourceCallback = Callable[[Source], None]


class WebRtcError(Exception):
    """The WHIP session could not start; ``status`` is the HTTP answer."""

    status = 500


class UnitBusy(WebRtcError):
    status = 409


class TooManySessions(WebRtcError):
    status = 503


class NegotiationFailed(WebRtcError):
    status = 400


class NoCandidates(WebRtcError):
    status = 503


# --- DTLS -----------------------------------------------------------------------------


class DtlsCertificate(RTCCertificate):
    """aiortc's certificate (ECDSA P-256) with a cipher list that also accepts RSA peers."""

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(DTLS_CIPHERS)
        return ctx


# --- ICE ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IceSettings:
    """Where ICE may bind, and which servers it may ask (none by default)."""

    hosts: tuple[str, ...] = ()  # host candidate addresses; empty: every non-loopback one
    port_min: int | None = None
    port_max: int | None = None
    servers: tuple[str, ...] = ()  # stun:host:port, turn:user:pass@host:port?transport=udp

    def __post_init__(self) -> None:
        for h in self.hosts:
            ipaddress.ip_address(h)  # ValueError names the bad address
        if (self.port_min is None) != (self.port_max is None):
            raise ValueError("ICE port range needs both ice_port_min and ice_port_max")
        if self.port_min is not None and self.port_max is not None and not (
            1024 <= self.port_min <= self.port_max <= 65535
        ):
            raise ValueError(f"ICE port range {self.port_min}-{self.port_max} is not valid")
        for url in self.servers:
            _ice_server(url)

    def configuration(self) -> RTCConfiguration:
        # An empty list, not None: None makes aiortc use Google's public STUN server.
        return RTCConfiguration(iceServers=[_ice_server(u) for u in self.servers])


def _ice_server(url: str) -> RTCIceServer:
    scheme, sep, rest = url.partition(":")
    if scheme not in ("stun", "stuns", "turn", "turns") or not sep or not rest:
        raise ValueError(f"ICE server {url!r}: expected stun:host:port or turn:user:pass@host")
    if "@" in rest:
        cred, _, host = rest.rpartition("@")
        user, _, password = cred.partition(":")
        return RTCIceServer(urls=f"{scheme}:{host}", username=user, credential=password)
    return RTCIceServer(urls=url)


def restrict_ice(pc: RTCPeerConnection, ice: IceSettings) -> int:
    """Limit the host candidates of every gatherer ``pc`` has now to ``ice.hosts`` and
    the port range. Call after ``setRemoteDescription``, before ``setLocalDescription``
    (which gathers). Returns the number of gatherers adjusted."""
    gatherers = {id(t.receiver.transport.transport.iceGatherer):
                 t.receiver.transport.transport.iceGatherer for t in pc.getTransceivers()}
    if pc.sctp is not None:
        g = pc.sctp.transport.transport.iceGatherer
        gatherers[id(g)] = g
    for g in gatherers.values():
        conn: Connection = g._connection
        if getattr(conn, "_gridhub_ice", None) is None:
            original = conn.get_component_candidates
            setattr(conn, "get_component_candidates",  # noqa: B010 (instance-level override)
                    functools.partial(_component_candidates, conn, original, ice))
            setattr(conn, "_gridhub_ice", ice)  # noqa: B010
    return len(gatherers)


async def _component_candidates(
    conn: Connection,
    original: Callable[..., Awaitable[list[Candidate]]],
    ice: IceSettings,
    component: int,
    addresses: list[str],
    timeout: int = 5,  # noqa: ASYNC109 (aioice's signature)
) -> list[Candidate]:
    addrs = list(ice.hosts) or addresses
    if ice.port_min is None or ice.port_max is None:
        return await original(component=component, addresses=addrs, timeout=timeout)
    loop = asyncio.get_running_loop()
    candidates: list[Candidate] = []
    host_protocols: list[StunProtocol] = []
    for address in addrs:
        protocol = await _bind_in_range(loop, conn, address, ice.port_min, ice.port_max)
        if protocol is None:
            log.warning("ICE: no free UDP port on %s in %d-%d", address, ice.port_min,
                        ice.port_max)
            continue
        sockname = protocol.transport.get_extra_info("sockname")
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", sockname[0]), component=component,
            transport="udp", priority=candidate_priority(component, "host"),
            host=sockname[0], port=sockname[1], type="host",
        )
        host_protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    conn._protocols += host_protocols
    if conn.stun_server:  # server-reflexive candidates of the range-bound sockets
        tasks = [asyncio.create_task(server_reflexive_candidate(p, conn.stun_server))
                 for p in host_protocols
                 if ipaddress.ip_address(p.local_candidate.host).version == 4]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            candidates += [t.result()[0] for t in done if t.exception() is None]
    if conn.turn_server:  # relayed candidates: aioice's own code, with no host addresses
        candidates += await original(component=component, addresses=[], timeout=timeout)
    return candidates


async def _bind_in_range(
    loop: asyncio.AbstractEventLoop, conn: Connection, address: str, lo: int, hi: int
) -> StunProtocol | None:
    ports = list(range(lo, hi + 1))
    start = random.randrange(len(ports))
    for port in ports[start:] + ports[:start]:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(conn), local_addr=(address, port)
            )
        except OSError:
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return protocol
    return None


class WhipPeerConnection(RTCPeerConnection):
    """An aiortc peer connection with the hub's ICE settings and DTLS certificate."""

    def __init__(self, ice: IceSettings) -> None:
        super().__init__(configuration=ice.configuration())
        attr = "_RTCPeerConnection__certificates"
        certs = getattr(self, attr, None)
        if not (isinstance(certs, list) and len(certs) == 1
                and isinstance(certs[0], RTCCertificate)):
            raise RuntimeError("aiortc internals changed: cannot install the DTLS certificate")
        setattr(self, attr, [DtlsCertificate.generateCertificate()])
        self.ice = ice

    @property
    def dtls_certificate(self) -> RTCCertificate:
        certs: list[RTCCertificate] = getattr(self, "_RTCPeerConnection__certificates")  # noqa: B009
        return certs[0]


# --- sessions -------------------------------------------------------------------------


@dataclass(eq=False)
class WhipSession:
    """One publishing unit: its peer connection, source and background tasks."""

    id: str
    unit_id: str
    username: str
    pc: WhipPeerConnection
    source: WhipSource
    answer: str = ""
    input_codec: str | None = None
    created_t: float = field(default_factory=time.monotonic)  # the offer came in
    answered_t: float | None = None  # the answer was ready
    end_reason: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    telemetry_messages: int = 0
    telemetry_rejected: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def location(self) -> str:
        return f"/whip/{self.unit_id}/{self.id}"


class WhipSessions:
    """The live WHIP sessions, at most one per unit. Also a hub ``Service`` (``stop()``
    closes every session)."""

    def __init__(
        self,
        *,
        ice: IceSettings | None = None,
        hints: BitrateHints | None = None,
        on_source_started: SourceCallback | None = None,
        on_source_ended: SourceCallback | None = None,
        on_telemetry: TelemetryCallback | None = None,
        max_sessions: int = 64,
        stall_s: float = 5.0,
        timeout_s: float = 20.0,
    ) -> None:
        self.ice = ice or IceSettings()
        self.hints = hints or BitrateHints()
        self._on_started = on_source_started
        self._on_ended = on_source_ended
        self._on_telemetry = on_telemetry
        self.max_sessions = max_sessions
        self.stall_s = stall_s
        self.timeout_s = timeout_s
        self._by_unit: dict[str, WhipSession] = {}
        self._pending: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._by_unit)

    def live(self, unit_id: str) -> WhipSession | None:
        return self._by_unit.get(unit_id)

    def get(self, unit_id: str, session_id: str) -> WhipSession | None:
        s = self._by_unit.get(unit_id)
        return s if s is not None and secrets.compare_digest(s.id, session_id) else None

    async def start(self) -> None:
        """Nothing to start: sessions come with requests."""

    async def stop(self) -> None:
        await self.close_all()

    async def close_all(self) -> None:
        await asyncio.gather(*(self.end(s, "hub shutting down") for s in
                               list(self._by_unit.values())))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def publish(self, unit_id: str, offer_sdp: str, username: str) -> WhipSession:
        """Answer ``offer_sdp`` for ``unit_id``; the session is live when this returns."""
        if unit_id in self._by_unit or unit_id in self._pending:
            raise UnitBusy(f"unit {unit_id} is already publishing; DELETE its session first "
                           f"or wait up to {self.timeout_s:.0f} s for it to time out")
        if len(self._by_unit) + len(self._pending) >= self.max_sessions:
            raise TooManySessions(f"the hub takes at most {self.max_sessions} WHIP sessions")
        self._pending.add(unit_id)  # reserved before the first await: no double publish
        try:
            pc = WhipPeerConnection(self.ice)
            source = WhipSource(unit_id, max_kbps=self.hints.max_kbps * 2)
        except BaseException:
            self._pending.discard(unit_id)  # never leave the unit reserved (409 forever)
            raise
        session = WhipSession(id=secrets.token_urlsafe(16), unit_id=unit_id,
                              username=username, pc=pc, source=source)
        try:
            self._wire(session)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except Exception as err:  # aiortc raises ValueError, KeyError, ... on odd SDP
                raise NegotiationFailed(f"offer rejected: {type(err).__name__}: {err}") from err
            self._only_first_video(pc)
            restrict_ice(pc, self.ice)
            try:
                answer_desc = await pc.createAnswer()
            except Exception as err:  # e.g. nothing in the offer aiortc can receive
                raise NegotiationFailed(f"no answer possible: {type(err).__name__}: {err}") \
                    from err
            await pc.setLocalDescription(answer_desc)
            answer = pc.localDescription.sdp
            if count_candidates(answer) == 0:
                raise NoCandidates("no ICE candidate could be bound (check GRIDHUB_ICE_HOSTS "
                                   "and GRIDHUB_ICE_PORTS)")
            session.answer = munge_answer(answer, self.hints)
            session.input_codec = _answer_codec(answer)
            source.input_codec = session.input_codec
        except BaseException:
            self._pending.discard(unit_id)
            await pc.close()
            raise
        self._pending.discard(unit_id)
        self._by_unit[unit_id] = session
        session.answered_t = time.monotonic()
        source.set_status("offline", "connecting")
        source.start()
        self._spawn(session, self._watchdog(session), "watchdog")
        log.info("whip %s: session %s started by %s (%s)", unit_id, session.id[:8], username,
                 session.input_codec)
        self._call(self._on_started, source, unit_id)
        return session

    async def end(self, session: WhipSession, reason: str) -> None:
        """End a session (idempotent): close the peer, stop the source, tell the owner."""
        if session.end_reason is not None:
            await session.ended.wait()
            return
        session.end_reason = reason
        if self._by_unit.get(session.unit_id) is session:
            del self._by_unit[session.unit_id]
        session.source.set_status("offline", reason)
        me = asyncio.current_task()
        others = [t for t in session.tasks if t is not me]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        try:
            await session.pc.close()
        except Exception:
            log.exception("whip %s: closing the peer connection failed", session.unit_id)
        await asyncio.to_thread(session.source.stop)
        log.info("whip %s: session %s ended (%s); %d frames, %d telemetry messages",
                 session.unit_id, session.id[:8], reason, session.source.health.frames,
                 session.telemetry_messages)
        session.ended.set()
        self._call(self._on_ended, session.source, session.unit_id)

    # internals -----------------------------------------------------------------------

    def _end_soon(self, session: WhipSession, reason: str) -> None:
        if session.end_reason is None:
            task = asyncio.ensure_future(self.end(session, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _spawn(self, session: WhipSession, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"whip-{session.unit_id}-{name}")
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    def _call(self, fn: SourceCallback | None, source: Source, unit_id: str) -> None:
        if fn is None:
            return
        try:
            fn(source)
        except Exception:
            log.exception("whip %s: source callback %r failed", unit_id, fn)

    def _wire(self, session: WhipSession) -> None:
        pc, unit = session.pc, session.unit_id

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not any(
                t.get_name().endswith("-video") for t in session.tasks
            ):
                self._spawn(session, self._pump(session, track), "video")
            else:  # aiortc queues decoded frames unboundedly: drain what we do not use
                self._spawn(session, _drain(track), f"drain-{track.kind}")

        @pc.on("connectionstatechange")
        def on_state() -> None:
            log.info("whip %s: connection %s", unit, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                self._end_soon(session, f"connection {pc.connectionState}")

        @pc.on("datachannel")
        def on_channel(channel: Any) -> None:
            if channel.label != TELEMETRY_LABEL:
                log.info("whip %s: ignoring data channel %r", unit, channel.label[:40])
                return

            @channel.on("message")  # type: ignore[untyped-decorator]
            def on_message(msg: str | bytes) -> None:
                if not isinstance(msg, str) or len(msg) > MAX_TELEMETRY_CHARS:
                    session.telemetry_rejected += 1
                    if session.telemetry_rejected in (1, 100, 10000):
                        log.warning("whip %s: telemetry message rejected (binary or over %d "
                                    "chars; %d so far)", unit, MAX_TELEMETRY_CHARS,
                                    session.telemetry_rejected)
                    return
                session.telemetry_messages += 1
                if self._on_telemetry is not None:
                    try:
                        self._on_telemetry(unit, msg)
                    except Exception:
                        log.exception("whip %s: telemetry callback failed", unit)

    @staticmethod
    def _only_first_video(pc: RTCPeerConnection) -> None:
        """Receive the first video section only; everything else inactive."""
        first = True
        for t in pc.getTransceivers():
            if t.kind == "video" and first:
                first = False
                continue
            t.direction = "inactive"

    async def _pump(self, session: WhipSession, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    session.source.feed(frame)
        except MediaStreamError:
            self._end_soon(session, "video track ended")

    async def _watchdog(self, session: WhipSession) -> None:
        src = session.source
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            last = src.last_frame_t
            idle = now - (last if last is not None else session.created_t)
            if idle >= self.timeout_s:
                what = "no video" if last is None else "no video for"
                self._end_soon(session, f"{what} in {self.timeout_s:.0f} s" if last is None
                               else f"{what} {self.timeout_s:.0f} s")
                return
            if last is not None and idle >= self.stall_s:
                src.set_status("offline", f"no video for {self.stall_s:.0f} s")


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def _answer_codec(sdp: str) -> str | None:
    """The first codec of the answer's first active video section (what the peer sends)."""
    in_video = False
    first_pt: str | None = None
    for ln in sdp.splitlines():
        if ln.startswith("m="):
            if in_video and first_pt is not None:
                break
            parts = ln.split()
            in_video = ln.startswith("m=video ") and len(parts) > 3 and parts[1] != "0"
            first_pt = parts[3] if in_video else None
        elif in_video and first_pt and ln.startswith(f"a=rtpmap:{first_pt} "):
            return ln.split(" ", 1)[1].split("/", 1)[0]
    return None
