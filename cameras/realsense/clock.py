"""A frame's capture time on the host's monotonic clock, from its librealsense timestamp.

librealsense stamps each frame in one of three domains:

- `system_time` and `global_time`: milliseconds of the host's wall clock (CLOCK_REALTIME), the
  second one being the device clock already mapped onto it by librealsense. Converted directly:
  wall-clock seconds minus the wall-to-monotonic offset read at arrival.
- `hardware_clock`: the device's own counter, on no host clock at all. Its offset to the host is
  tracked as the smallest (arrival − timestamp) over a sliding window: the least-delayed recent
  frame bounds the offset from above, and the window follows the crystal's drift. Capture times
  mapped this way are late by that smallest transport delay (USB and driver, a few ms), so frame
  ages read short by as much.

A recording replays timestamps from the day it was made: its frames are always mapped through
the tracked offset, whatever their domain. So is a live stream whose wall-clock stamps are
implausible (in the future, or seconds old on arrival), which a log line reports once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

HOST_DOMAINS = ("system_time", "global_time")
_FUTURE_TOLERANCE_S = 0.005  # a host-stamped frame from later than its arrival is not believed
_MAX_HOST_AGE_S = 2.0  # ... nor one that took longer than this to arrive


class FrameClock:
    """Maps (timestamp_ms, domain, arrival) to a capture time in host monotonic seconds."""

    def __init__(
        self,
        *,
        window: int = 90,
        trust_host_domains: bool = True,
        wall_minus_monotonic: Callable[[], float] = lambda: time.time() - time.monotonic(),
        name: str = "camera",
    ) -> None:
        self.window = window
        self.trust_host_domains = trust_host_domains
        self._wall_offset = wall_minus_monotonic
        self.name = name
        # Monotonic deque of (index, arrival − timestamp): its front is the window's minimum.
        self._mins: deque[tuple[int, float]] = deque()
        self._index = 0
        self._last_ts_s = float("-inf")
        self._warned = False
        self.resets = 0  # timestamps went backwards (a looped recording, a device reset)

    @property
    def offset_s(self) -> float:
        """The tracked device-to-host offset (NaN before the first tracked frame)."""
        return self._mins[0][1] if self._mins else float("nan")

    def capture_time(self, timestamp_ms: float, domain: str, arrival_s: float) -> float:
        if domain in HOST_DOMAINS and self.trust_host_domains:
            t = timestamp_ms / 1e3 - self._wall_offset()
            if t <= arrival_s + _FUTURE_TOLERANCE_S and arrival_s - t <= _MAX_HOST_AGE_S:
                return t
            if not self._warned:
                log.warning(
                    "%s: %s timestamps are %.3f s from arrival; tracking their offset instead",
                    self.name,
                    domain,
                    arrival_s - t,
                )
                self._warned = True
        return self._tracked(timestamp_ms / 1e3, arrival_s)

    def _tracked(self, ts_s: float, arrival_s: float) -> float:
        if ts_s < self._last_ts_s:
            self._mins.clear()
            self.resets += 1
        self._last_ts_s = ts_s
        d = arrival_s - ts_s
        while self._mins and self._mins[-1][1] >= d:
            self._mins.pop()
        self._mins.append((self._index, d))
        while self._mins[0][0] <= self._index - self.window:
            self._mins.popleft()
        self._index += 1
        return ts_s + self._mins[0][1]
