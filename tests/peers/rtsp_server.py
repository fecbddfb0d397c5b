"""A real GStreamer RTSP server for the RTSP source tests and bench, and its launcher.

As a script it runs under Debian's interpreter (``/usr/bin/python3``), the only one with
the GStreamer bindings (``gi``, GstRtspServer). Imported (from the venv), it gives the
tests and the bench :class:`ServerProcess` (start, SIGKILL, restart on the same port,
pause) and clip helpers (:func:`make_clip`, :func:`damage_clip`); nothing here imports
``gi`` at module level.

Media, H.264 sent as RTP (over RTSP/TCP or UDP, as the client asks):

* ``--h264 FILE``: an Annex B elementary stream (ffmpeg ``-f h264``) served as is, access
  unit by access unit, paced at ``--fps`` and looped forever. The bytes go on the wire
  unchanged, so damage made to the file (the corrupt-stream test) reaches the client.
* ``--testsrc WxH``: ``videotestsrc ! x264enc`` live, ``--fps`` frames a second.

Each client gets its own pipeline (not shared), so a stream starts on a keyframe;
``--shared`` makes clients join one running pipeline, mid-GOP as with many cameras. The
server binds ``--host``/``--port`` (0: any free port) with address reuse, so it can be
killed and started again on the same port; once listening it prints one line
``READY <port>`` on stdout. ``--auth USER:PASS`` requires HTTP Basic credentials.
``--mount`` may be given more than once. ``--sdp-fps`` announces another frame rate
than the one sent (``--h264`` only).
"""

from __future__ import annotations

import argparse
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SERVER_PYTHON = "/usr/bin/python3"  # Debian's interpreter, with python3-gst-1.0
FFMPEG = "/usr/bin/ffmpeg"
START_CODE = b"\x00\x00\x01"
VCL = {1, 5}
PARAMS_OR_SEI = {6, 7, 8, 9}


# -- H.264 Annex B, pure functions ---------------------------------------------------


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B stream, each with a 4-byte start code."""
    starts: list[int] = []
    i = data.find(START_CODE)
    while i >= 0:
        starts.append(i + 3)
        i = data.find(START_CODE, i + 3)
    out = []
    for n, s in enumerate(starts):
        end = starts[n + 1] - 3 if n + 1 < len(starts) else len(data)
        nal = data[s:end]
        while nal.endswith(b"\x00"):  # the leading zero of the next 4-byte start code
            nal = nal[:-1]
        if nal:
            out.append(b"\x00\x00\x00\x01" + nal)
    return out


def access_units(data: bytes, hevc: bool = False) -> list[bytes]:
    """Group NAL units into access units. H.264 (7.4.1.2.3): a new AU starts at an AUD,
    SPS, PPS or SEI after a slice, or at a slice whose first_mb_in_slice is 0. H.265
    (``hevc``, 7.4.2.4.4): at an AUD, parameter set or prefix SEI after a slice, or at a
    slice segment whose first_slice_segment_in_pic_flag is set. Both flags are the first
    bit after the NAL header (one byte in H.264, two in H.265)."""
    vcl, starts, header = (HEVC_VCL, HEVC_PARAMS_OR_SEI, 2) if hevc else (VCL, PARAMS_OR_SEI, 1)
    aus: list[bytes] = []
    cur: list[bytes] = []
    seen_vcl = False
    for nal in nal_units(data):
        kind = hevc_type(nal) if hevc else nal[4] & 0x1F
        first = kind in vcl and len(nal) > 4 + header and nal[4 + header] & 0x80 != 0
        if cur and seen_vcl and (kind in starts or first):
            aus.append(b"".join(cur))
            cur, seen_vcl = [], False
        cur.append(nal)
        seen_vcl = seen_vcl or kind in vcl
    if cur:
        aus.append(b"".join(cur))
    return aus


# H.265 (HEVC): a two-byte NAL header, the type in bits 1-6 of the first byte.
HEVC_VCL = set(range(32))
HEVC_PARAMS_OR_SEI = {32, 33, 34, 35, 39}  # VPS, SPS, PPS, AUD, prefix SEI


def hevc_type(nal: bytes) -> int:
    """The type of an H.265 NAL unit with its 4-byte start code."""
    return (nal[4] >> 1) & 0x3F


def is_idr(au: bytes) -> bool:
    return any(n[4] & 0x1F == 5 for n in nal_units(au))


def damage(au: bytes, rnd: random.Random) -> bytes:
    """The access unit with the middle fifth of each slice overwritten by random non-zero
    bytes above 1 (no start code can appear; the slice headers stay intact)."""
    out = []
    for nal in nal_units(au):
        if nal[4] & 0x1F in VCL and len(nal) > 100:
            b = bytearray(nal)
            a, z = len(b) * 2 // 5, len(b) * 3 // 5
            b[a:z] = bytes(rnd.randrange(2, 256) for _ in range(z - a))
            nal = bytes(b)
        out.append(nal)
    return b"".join(out)


# -- client side: clips and the server process ---------------------------------------


def make_clip(path: Path, *, width: int, height: int, fps: int = 15, seconds: float = 6.0,
              gop: int | None = None, preset: str = "ultrafast",
              bitrate: str | None = None, codec: str = "h264") -> Path:
    """An Annex B H.264 clip like a camera's: SPS/PPS before every IDR, no B-frames, a
    ``gop``-frame GOP (default 1 s). ``ultrafast`` is cheap to make and decode (CAVLC, no
    deblocking); ``veryfast`` with a ``bitrate`` such as "2M" is closer to a camera.
    ``codec="hevc"``: the same as H.265 (libx265, VPS/SPS/PPS before every IRAP)."""
    gop = gop or fps
    rate = ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate] if bitrate else []
    if codec == "hevc":
        enc = ["-c:v", "libx265", "-preset", preset, "-tune", "zerolatency", *rate,
               "-g", str(gop), "-bf", "0", "-pix_fmt", "yuv420p", "-x265-params",
               f"repeat-headers=1:aud=1:scenecut=0:keyint={gop}:min-keyint={gop}:"
               "log-level=error", "-f", "hevc"]
    else:
        enc = ["-c:v", "libx264", "-preset", preset, "-tune", "zerolatency", *rate,
               "-g", str(gop), "-sc_threshold", "0", "-bf", "0", "-pix_fmt", "yuv420p",
               "-x264-params", "repeat-headers=1:aud=1", "-f", "h264"]
    if not path.exists():
        tmp = path.with_suffix(".tmp" + path.suffix)
        subprocess.run(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
             f"testsrc2=size={width}x{height}:rate={fps}", "-t", str(seconds), *enc,
             str(tmp)],
            check=True, timeout=120,
        )
        tmp.rename(path)
    return path


def damage_clip(src: Path, dst: Path, indices: set[int], seed: int = 7) -> list[int]:
    """Write ``src`` to ``dst`` with the access units at ``indices`` damaged; returns the
    indices of the damaged units that are IDRs."""
    aus = access_units(src.read_bytes())
    rnd = random.Random(seed)
    out = [damage(au, rnd) if i in indices else au for i, au in enumerate(aus)]
    dst.write_bytes(b"".join(out))
    return [i for i in sorted(indices) if i < len(aus) and is_idr(aus[i])]


class ServerProcess:
    """``rtsp_server.py`` run by Debian's Python; restartable on the same port."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None, timeout: float = 15.0) -> None:
        port = self.port if port is None else port
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [SERVER_PYTHON, __file__, "--port", str(port), *self.args],
                stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.kill()
                    raise TimeoutError(f"RTSP server not ready:\n{self.log_text()}")
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    raise RuntimeError(f"RTSP server exited:\n{self.log_text()}")
                line += chunk
        if not line.startswith(b"READY "):
            self.kill()
            raise RuntimeError(f"RTSP server: {line!r}\n{self.log_text()}")
        self.port = int(line.split()[1])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def url(self, path: str = "/cam", userinfo: str | None = None) -> str:
        auth = f"{userinfo}@" if userinfo else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{path}"

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a goodbye, as a camera losing power."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def restart(self) -> None:
        """Start again on the same port."""
        self.kill()
        self.start(self.port)

    def pause(self) -> None:
        """SIGSTOP: the connection stays open but nothing more is sent (a stalled camera)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


# -- server side (Debian's Python with GStreamer) ------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description="GStreamer RTSP server for tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mount", action="append", help="path to serve (default /cam)")
    ap.add_argument("--h264", help="Annex B H.264 file to serve, looped")
    ap.add_argument("--h265", help="Annex B H.265 file to serve, looped")
    ap.add_argument("--testsrc", help="WxH: serve videotestsrc ! x264enc instead")
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--sdp-fps", type=int, help="frame rate announced in the SDP (default "
                    "--fps): a camera that promises more than it delivers")
    ap.add_argument("--auth", help="USER:PASS required from clients (HTTP Basic)")
    ap.add_argument("--shared", action="store_true",
                    help="one pipeline for all clients: a client joins mid-GOP")
    args = ap.parse_args()
    if sum(map(bool, (args.h264, args.h265, args.testsrc))) != 1:
        ap.error("give exactly one of --h264, --h265 and --testsrc")

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    fps = args.fps
    caps = ("video/x-h264,stream-format=byte-stream,alignment=au,"
            f"framerate={args.sdp_fps or fps}/1")
    # The media carries SPS/PPS before each IDR: send them as they are. Inserting more
    # (config-interval=-1) would put them between the slices of a multi-slice IDR.
    pay = "h264parse ! rtph264pay name=pay0 pt=96 config-interval=0"
    aus: list[bytes] = []
    if args.h265:
        caps = caps.replace("x-h264", "x-h265")
        pay = "h265parse ! rtph265pay name=pay0 pt=96 config-interval=0"
    if args.h264 or args.h265:
        with open(args.h264 or args.h265, "rb") as f:
            data = f.read()
        aus = access_units(data, hevc=bool(args.h265))
        if not aus:
            ap.error(f"{args.h264 or args.h265}: no access units")
        launch = f'( appsrc name=src is-live=false format=time caps="{caps}" ! {pay} )'
    else:
        w, h = (int(v) for v in args.testsrc.split("x"))
        launch = (
            f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},"
            f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast "
            f"key-int-max={fps} bframes=0 ! video/x-h264,profile=constrained-baseline "
            f"! {pay} )"
        )
    frame_ns = Gst.SECOND // fps

    def configure(_factory: Any, media: Any) -> None:
        src = media.get_element().get_by_name("src")
        if src is None:
            return
        state = {"n": 0}

        def need_data(appsrc: Any, _length: int) -> None:
            n = state["n"]
            buf = Gst.Buffer.new_wrapped(aus[n % len(aus)])
            buf.pts = buf.dts = n * frame_ns
            buf.duration = frame_ns
            state["n"] = n + 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for path in args.mount or ["/cam"]:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(args.shared)
        factory.connect("media-configure", configure)
        if args.auth:
            factory.add_role_from_structure(Gst.Structure.from_string(
                "user,media.factory.access=(boolean)true,"
                "media.factory.construct=(boolean)true"
            )[0])
        mounts.add_factory(path, factory)
    if args.auth:
        user, _, password = args.auth.partition(":")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        sys.stdout.write(f"ERROR cannot listen on {args.host}:{args.port}\n")
        sys.stdout.flush()
        return 1
    sys.stdout.write(f"READY {server.get_bound_port()}\n")
    sys.stdout.flush()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
