"""The committed trajectory and how new actions join it without a jump.

Timestamped points (host monotonic clock) of six joint targets and the gripper. A new chunk or
System 1 slice never replaces what is already committed for the next `freeze_s` (the actions
that execute while the next inference runs); after that it blends in linearly over
`crossfade_s`, starting from the old trajectory's own value, so position is continuous at the
boundary. The control process samples this trajectory at its own rate.
"""

from __future__ import annotations

import numpy as np

from edgevla.runtime.shm import ACTION_WIDTH, TRAJECTORY_POINTS


def sample(times: np.ndarray, points: np.ndarray, count: int, t: float, out: np.ndarray) -> None:
    """Linear interpolation at `t`; the first point before the start, the last after the end."""
    if count == 1 or t <= times[0]:
        out[:] = points[0]
        return
    if t >= times[count - 1]:
        out[:] = points[count - 1]
        return
    i = int(np.searchsorted(times[:count], t, side="right"))
    t0, t1 = times[i - 1], times[i]
    w = (t - t0) / (t1 - t0)
    np.multiply(points[i - 1], 1.0 - w, out=out)
    out += w * points[i]


class CommittedTrajectory:
    def __init__(self, capacity: int = TRAJECTORY_POINTS) -> None:
        self.times = np.zeros(capacity)
        self.points = np.zeros((capacity, ACTION_WIDTH))
        self.count = 0

    def hold(self, t: float, point: np.ndarray) -> None:
        """A single point: hold it."""
        self.times[0] = t
        self.points[0] = point
        self.count = 1

    def sample(self, t: float, out: np.ndarray) -> np.ndarray:
        sample(self.times, self.points, self.count, t, out)
        return out

    def stitch(
        self,
        new_times: np.ndarray,
        new_points: np.ndarray,
        now: float,
        freeze_s: float,
        crossfade_s: float,
        keep_past_s: float = 0.1,
    ) -> None:
        """Join `new_points` (at `new_times`, ascending) onto the committed trajectory."""
        if self.count == 0:
            raise ValueError("hold a starting point before stitching")
        boundary = now + freeze_s
        old_t = self.times[: self.count].copy()
        old_p = self.points[: self.count].copy()
        keep = (old_t < boundary) & (old_t >= now - keep_past_s)
        frozen_t, frozen_p = old_t[keep], old_p[keep]
        later = new_times >= boundary
        fresh_t = new_times[later]
        fresh_p = np.empty((len(fresh_t), ACTION_WIDTH))
        old_value = np.empty(ACTION_WIDTH)
        for k, t in enumerate(fresh_t):
            sample(old_t, old_p, len(old_t), t, old_value)
            w = 1.0 if crossfade_s <= 0 else min(max((t - boundary) / crossfade_s, 0.0), 1.0)
            fresh_p[k] = (1.0 - w) * old_value + w * new_points[later][k]
        # The boundary itself, so the junction is pinned to the old trajectory's value there.
        sample(old_t, old_p, len(old_t), boundary, old_value)
        times = np.concatenate([frozen_t, [boundary], fresh_t])
        points = np.concatenate([frozen_p, old_value[None], fresh_p])
        order = np.argsort(times, kind="stable")
        times, points = times[order], points[order]
        unique = np.concatenate([[True], np.diff(times) > 1e-9])
        times, points = times[unique], points[unique]
        n = min(len(times), len(self.times))
        self.times[:n] = times[:n]
        self.points[:n] = points[:n]
        self.count = n
