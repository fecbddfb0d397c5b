"""Ingest: video sources in, latest decoded frames (and later encoded packets) out.

Owns the sources (``source.py`` is their contract): files played as cameras and the
built-in demo scene (``file_source``, ``demo_scene``), RTSP street cameras (``rtsp``) and
WHIP patrol streams (``whip`` sans-I/O, ``webrtc`` aiortc, ``whip_http`` endpoints). Each
gives the latest decoded frame to detection and its encoded H.264 packets to a
``PacketRing``, from which the live wall muxes fragmented MP4 once per source (``live``,
``live_http``) and the recorder writes fMP4 segments by stream copy (``recorder``;
``segments`` repairs them and cuts incident clips; ``replay`` cuts replay windows with
their media-to-wall-clock map). A source never raises into its
owner: it goes offline with a reason and retries.
"""

from __future__ import annotations

from pathlib import Path

from hub.config import CameraConfig, DemoSceneSourceConfig, FileSourceConfig, RtspSourceConfig
from ingest.file_source import FileSource
from ingest.frames import Frame, LatestFrame
from ingest.packets import PacketRing, StreamInfo, VideoPacket
from ingest.source import Source, SourceHealth

__all__ = [
    "FileSource", "Frame", "LatestFrame", "PacketRing", "Source", "SourceHealth", "StreamInfo",
    "VideoPacket", "make_source",
]


def make_source(cam: CameraConfig, config_root: Path, data_dir: Path) -> Source:
    """The source for a camera's configuration (not started)."""
    slot = LatestFrame()
    src = cam.source
    if isinstance(src, FileSourceConfig):
        path = Path(src.path)
        path = path if path.is_absolute() else config_root / path
        return FileSource(cam.id, path, slot, loop=src.loop, realtime=src.realtime)
    if isinstance(src, DemoSceneSourceConfig):
        out = data_dir / "demo" / f"scene_{src.width}x{src.height}_{src.fps}.mp4"

        def build() -> Path:
            from ingest.demo_scene import build_demo_scene

            return build_demo_scene(out, width=src.width, height=src.height, fps=src.fps)

        return FileSource(cam.id, build, slot, loop=True, realtime=True)
    if isinstance(src, RtspSourceConfig):
        from ingest.rtsp import RtspSource

        return RtspSource(
            cam.id, src.url, sub_url=src.sub_url, transport=src.transport,
            open_timeout_s=src.open_timeout_s, stall_s=src.stall_s,
            backoff_max_s=src.backoff_max_s, slot=slot,
        )
    raise ValueError(f"camera {cam.id}: unsupported source {src!r}")
