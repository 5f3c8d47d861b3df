"""A monotonic clock for simulated devices: it moves only when told to, so the physics and the
code driving it run as fast as the host allows while seeing the times real time would give."""

from __future__ import annotations


class SimClock:
    """Callable like `time.monotonic`; `advance` (or `sleep`, for loops written against real
    time) moves it forward."""

    def __init__(self, t_s: float = 0.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s

    def advance(self, dt_s: float) -> None:
        self.t_s += dt_s

    def sleep(self, dt_s: float) -> None:
        self.t_s += max(dt_s, 0.0)
