#!/usr/bin/python3
"""A WHIP publisher as a dashcam would be: GStreamer webrtcbin, videotestsrc, H.264 or VP8.

Runs under Debian's /usr/bin/python3 (the GStreamer Python bindings exist only there), as
a subprocess of the tests and the benchmark. webrtcbin keeps GStreamer's own DTLS
certificate (RSA 2048 in 1.22), which is what makes it a useful peer for the hub.

Non-trickle: the offer is POSTed once ICE gathering is complete. With ``--loopback``
(default) libnice gathers on 127.0.0.1 only (through libnice's C API with ctypes, as
there is no introspection data for libnice here), so the test stays on loopback.

Prints one JSON object per line on stdout: ``{"event": "answer", "status": 201,
"location": ...}``, ``{"event": "state", ...}``, ``{"event": "error", ...}``,
``{"event": "deleted", "status": 200}``. SIGTERM/SIGINT or ``--seconds`` ends the
session with DELETE. Exit status: 0 after a clean DELETE, 2 when the hub refused the
offer, 1 on any other failure.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

ENCODERS = {
    "h264": (
        "x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} key-int-max={fps} "
        "! video/x-h264,profile=constrained-baseline "
        "! rtph264pay config-interval=-1 aggregate-mode=zero-latency pt=102 "
        "! application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload=102"
    ),
    "vp8": (
        "vp8enc deadline=1 cpu-used=8 target-bitrate={bps} keyframe-max-dist={fps} "
        "! rtpvp8pay pt=96 "
        "! application/x-rtp,media=video,encoding-name=VP8,clock-rate=90000,payload=96"
    ),
}


def emit(event: str, **data: object) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **data}) + "\n")
    sys.stdout.flush()


def loopback_only(webrtc: Gst.Element) -> None:
    """Make webrtcbin's libnice agent gather on 127.0.0.1 only."""
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    gobject = ctypes.CDLL("libgobject-2.0.so.0")
    gobject.g_object_ref.argtypes = [ctypes.c_void_p]
    ice = webrtc.get_property("ice-agent")
    # webrtcbin never sinks its ICE object's floating reference; PyGObject does, and
    # would free it with the Python wrapper. Keep one reference for webrtcbin.
    gobject.g_object_ref(get_ptr(ice.__gpointer__, None))
    agent = ice.get_property("agent")
    ptr = get_ptr(agent.__gpointer__, None)
    nice = ctypes.CDLL("libnice.so.10")
    nice.nice_address_new.restype = ctypes.c_void_p
    nice.nice_address_set_from_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    nice.nice_agent_add_local_address.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    nice.nice_address_free.argtypes = [ctypes.c_void_p]
    addr = nice.nice_address_new()
    try:
        if not nice.nice_address_set_from_string(addr, b"127.0.0.1"):
            raise RuntimeError("libnice: bad address")
        if not nice.nice_agent_add_local_address(ptr, addr):
            raise RuntimeError("libnice: could not add 127.0.0.1")
    finally:
        nice.nice_address_free(addr)


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.location: str | None = None
        self.exit_code = 1
        self.channel: GstWebRTC.WebRTCDataChannel | None = None
        self.sent = 0
        enc = ENCODERS[args.codec].format(kbps=args.kbps, bps=args.kbps * 1000, fps=args.fps)
        self.pipe = Gst.parse_launch(
            f"videotestsrc is-live=true pattern={args.pattern} "
            f"! video/x-raw,width={args.width},height={args.height},framerate={args.fps}/1 "
            f"! videoconvert ! queue max-size-buffers=2 leaky=downstream ! {enc} "
            "! webrtcbin name=w bundle-policy=max-bundle"
        )
        self.webrtc = self.pipe.get_by_name("w")
        if args.loopback:
            loopback_only(self.webrtc)
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::connection-state", self.on_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)
        self.offered = False

    # negotiation --------------------------------------------------------------------

    def on_negotiation_needed(self, webrtc: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_offer, None, None)
        webrtc.emit("create-offer", None, promise)

    def on_offer(self, promise: Gst.Promise, *_: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering(self, webrtc: Gst.Element, _pspec: object) -> None:
        state = webrtc.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.offered:
            self.offered = True
            sdp = webrtc.get_property("local-description").sdp.as_text()
            threading.Thread(target=self.post, args=(sdp,), daemon=True).start()

    def post(self, sdp: str) -> None:
        req = urllib.request.Request(
            self.args.url, data=sdp.encode(), method="POST",
            headers={"Content-Type": "application/sdp",
                     "Authorization": f"Bearer {self.args.token}"},
        )
        emit("offer", codec=self.args.codec, bytes=len(sdp))
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                answer = resp.read().decode()
                location = resp.headers.get("Location")
                status = resp.status
        except urllib.error.HTTPError as err:
            emit("refused", status=err.code, body=err.read().decode(errors="replace")[:500])
            self.exit_code = 2
            GLib.idle_add(self.quit)
            return
        except OSError as err:
            emit("error", message=f"POST failed: {err}")
            GLib.idle_add(self.quit)
            return
        base = self.args.url.split("/whip/", 1)[0]
        self.location = base + location if location and location.startswith("/") else location
        emit("answer", status=status, location=location)
        GLib.idle_add(self.set_answer, answer)

    def set_answer(self, answer: str) -> bool:
        res, msg = GstSdp.SDPMessage.new_from_text(answer)
        if res != GstSdp.SDPResult.OK:
            emit("error", message="unparsable answer")
            self.quit()
            return False
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.webrtc.emit("set-remote-description", desc, Gst.Promise.new())
        if self.channel is not None:
            GLib.timeout_add(int(1000 / self.args.telemetry_hz), self.send_telemetry)
        return False

    def send_telemetry(self) -> bool:
        ch = self.channel
        if ch is None:
            return False
        if ch.get_property("ready-state") == GstWebRTC.WebRTCDataChannelState.OPEN:
            self.sent += 1
            fix = {"lat": 34.7466 + self.sent * 1e-5, "lon": 113.6254, "speed": 8.3,
                   "heading": 90.0, "accuracy": 5.0, "time": int(time.time() * 1000)}
            ch.emit("send-string", json.dumps(fix))
        return True

    # state --------------------------------------------------------------------------

    def on_state(self, webrtc: Gst.Element, _pspec: object) -> None:
        state = webrtc.get_property("connection-state")
        emit("state", state=state.value_nick)
        if state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            self.quit()

    def on_error(self, _bus: Gst.Bus, msg: Gst.Message) -> None:
        err, debug = msg.parse_error()
        emit("error", message=f"{err.message} ({debug})")
        self.quit()

    def run(self) -> int:
        self.pipe.set_state(Gst.State.READY)  # webrtcbin makes data channels from READY on
        if self.args.telemetry_hz > 0:
            self.channel = self.webrtc.emit("create-data-channel", "telemetry", None)
            if self.channel is None:
                emit("error", message="webrtcbin did not create the data channel")
                return 1
        self.pipe.set_state(Gst.State.PLAYING)
        for sig in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, self.stop)
        if self.args.seconds > 0:
            GLib.timeout_add(int(self.args.seconds * 1000), self.stop)
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return self.exit_code

    def stop(self) -> bool:
        if self.location:
            req = urllib.request.Request(
                self.location, method="DELETE",
                headers={"Authorization": f"Bearer {self.args.token}"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    emit("deleted", status=resp.status)
                    self.exit_code = 0
            except (urllib.error.HTTPError, OSError) as err:
                emit("error", message=f"DELETE failed: {err}")
        self.quit()
        return False

    def quit(self) -> bool:
        self.loop.quit()
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--url", required=True, help="WHIP endpoint, http://host:port/whip/<unit>")
    p.add_argument("--token", required=True, help="bearer token")
    p.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--kbps", type=int, default=1000)
    p.add_argument("--pattern", default="ball")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: signal)")
    p.add_argument("--telemetry-hz", type=float, default=0, help="fake GPS on 'telemetry'")
    p.add_argument("--no-loopback", dest="loopback", action="store_false",
                   help="let libnice gather on every interface")
    args = p.parse_args()
    Gst.init(None)
    missing = [e for e in ("webrtcbin", "x264enc", "vp8enc", "videotestsrc")
               if Gst.ElementFactory.find(e) is None]
    if missing:
        emit("error", message=f"missing GStreamer elements: {missing}")
        return 1
    return Client(args).run()


if __name__ == "__main__":
    sys.exit(main())
