"""Frames handed from sources to detectors: only the latest is kept, the rest are counted."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import av
import numpy as np


@dataclass
class Frame:
    """One decoded video frame; ``image()`` converts to BGR only when someone needs it."""

    seq: int
    t: float  # seconds on the source's clock (monotonic live, media time in evaluation)
    wall: datetime  # when it was captured (UTC)
    video: av.VideoFrame | None = None
    array: np.ndarray | None = None

    def image(self) -> np.ndarray:
        if self.array is None:
            if self.video is None:
                raise ValueError("frame has no pixels")
            self.array = self.video.to_ndarray(format="bgr24")
            self.video = None
        return self.array


class LatestFrame:
    """A one-slot mailbox between a source thread and a consumer thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._taken = True
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._lock:
            if not self._taken:
                self.dropped += 1
            self._frame, self._taken = frame, False

    def take(self) -> Frame | None:
        """The newest frame not taken yet, or None."""
        with self._lock:
            if self._taken or self._frame is None:
                return None
            self._taken = True
            return self._frame
