"""Shared memory between the supervisor, the control process and the policy process.

Each block is one `multiprocessing.shared_memory.SharedMemory` carved into named numpy arrays;
nothing is pickled on the way. Blocks with more than one field that must be read together are
guarded by a single-writer sequence lock: the writer makes `seq` odd, writes, makes it even; a
reader copies and retries if `seq` was odd or changed. On x86-64 (TSO) plain stores keep their
order; an ARM port (Jetson) must revisit this with explicit barriers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

_ALIGN = 64  # a cache line per field: writers of different fields do not share lines


@dataclass(frozen=True)
class Field:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float64"


class ShmBlock:
    """Named numpy views over one shared-memory segment. The creator unlinks it."""

    def __init__(self, name: str, fields: Sequence[Field], create: bool) -> None:
        offsets, size = [], 0
        for f in fields:
            offsets.append(size)
            nbytes = int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize
            size += -(-nbytes // _ALIGN) * _ALIGN
        # Processes spawned by the creator share its resource tracker, which keeps one entry
        # per name: attaching registers nothing new, and only the creator unlinks.
        self._shm = shared_memory.SharedMemory(name=name, create=create, size=max(size, 1))
        self.name = name
        self.created = create
        self.arrays: dict[str, np.ndarray] = {}
        for f, offset in zip(fields, offsets, strict=True):
            array = np.ndarray(f.shape, dtype=f.dtype, buffer=self._shm.buf, offset=offset)
            if create:
                array.fill(0)
            self.arrays[f.name] = array

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["arrays"][name]
        except KeyError:
            raise AttributeError(name) from None

    def close(self) -> None:
        self.arrays.clear()
        with contextlib.suppress(BufferError):
            self._shm.close()
        if self.created:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


class SeqLock:
    """Single-writer sequence lock over the int64 field `seq` of a block."""

    def __init__(self, block: ShmBlock) -> None:
        self._seq = block.arrays["seq"]

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        # An exception mid-write leaves seq odd: readers never accept the half-written block,
        # and the consumer's deadline trips instead.
        self._seq[0] += 1
        yield
        self._seq[0] += 1

    def begin(self) -> int:
        return int(self._seq[0])

    def valid(self, begun: int) -> bool:
        return begun % 2 == 0 and int(self._seq[0]) == begun

    def read(self, copy: Any, max_tries: int = 1000) -> bool:
        """Run `copy()` until it saw a consistent snapshot; False if the writer never let it."""
        for _ in range(max_tries):
            begun = self.begin()
            if begun % 2:
                time.sleep(0)
                continue
            copy()
            if self.valid(begun):
                return True
        return False

    @property
    def version(self) -> int:
        return int(self._seq[0])


# One row per control cycle: time, command (6 + gripper), measured joints, control state, and
# the policy's target before the filter (6 + gripper; NaN while none is sampled).
RECORD_COLUMNS = (
    "t",
    *(f"q_cmd{i}" for i in range(6)),
    "gripper_cmd",
    *(f"q_meas{i}" for i in range(6)),
    "state",
    *(f"target{i}" for i in range(6)),
    "gripper_target",
    "sent",  # 1: the command went to the robot; 0: computed only (not anchored, or latched)
)
RECORD_WIDTH = len(RECORD_COLUMNS)

TRAJECTORY_POINTS = 64
ACTION_WIDTH = 7  # six joints and the gripper


def trajectory_fields() -> list[Field]:
    """Policy → control: the committed trajectory, timestamped points on the host clock."""
    return [
        Field("seq", (1,), "int64"),
        Field("t_written", (1,)),
        Field("count", (1,), "int64"),
        Field("times", (TRAJECTORY_POINTS,)),
        Field("points", (TRAJECTORY_POINTS, ACTION_WIDTH)),
    ]


def robot_fields() -> list[Field]:
    """Control → policy: the arm as last measured, and what the control process is doing."""
    return [
        Field("seq", (1,), "int64"),
        Field("t", (1,)),
        Field("q", (6,)),
        Field("qd", (6,)),
        Field("gripper", (1,)),
        Field("safety_mode", (1,), "int64"),
        Field("control_state", (1,), "int64"),
    ]


def world_fields(size: int) -> list[Field]:
    """Control → cameras: the simulated world's full state, for rendering in another process."""
    return [Field("seq", (1,), "int64"), Field("t", (1,)), Field("qpos", (size,))]


def policy_fields(ring: int) -> list[Field]:
    """Policy → control and supervisor: liveness, camera freshness, latency rings."""
    return [
        Field("heartbeat_t", (1,)),
        Field("frame_t", (1,)),  # capture time of the oldest image in the newest frame set
        Field("frame_number", (1,), "int64"),
        Field("frames_dropped", (1,), "int64"),  # frame numbers the policy never saw
        Field("frames_lost", (1,), "int64"),  # ... of which the camera driver never got
        Field("frames_stale", (1,), "int64"),  # frame sets too old to use when complete
        Field("cam_count", (1,), "int64"),
        Field("cam", (ring, 3)),  # t_published, newest arrival → published, age when published
        Field("ready", (1,), "int64"),
        Field("pid", (1,), "int64"),
        Field("s2_count", (1,), "int64"),
        Field("s2", (ring, 3)),  # t_end, latency_s, chosen candidate
        Field("s1_count", (1,), "int64"),
        Field("s1", (ring, 3)),  # t_end, latency_s, frame-to-setpoint latency_s
    ]


def control_fields(ring: int) -> list[Field]:
    """Control → supervisor: state, cycle statistics, the commanded and measured trajectories."""
    return [
        Field("state", (1,), "int64"),
        Field("rt", (1,), "int64"),  # 1: SCHED_FIFO in effect
        Field("cycle", (1,), "int64"),
        Field("missed", (1,), "int64"),
        Field("t_start", (1,)),
        Field("period_error_us", (ring,)),
        Field("work_us", (ring,)),  # time spent inside each cycle
        Field("record", (ring, RECORD_WIDTH)),  # see RECORD_COLUMNS
        Field("trip_count", (1,), "int64"),
        Field("trips", (32, 5)),  # cause, t_trip, t_deadline, t_first_stop_command, t_at_rest
        Field("counters", (4,), "int64"),  # clamped position, scaled velocity, defence, holds
    ]


POLICY_RING = 4096


@dataclass(frozen=True)
class Layout:
    """Sizes every process must agree on; the supervisor decides them, children receive them."""

    names: dict[str, str]
    control_ring: int
    world_size: int

    def specs(self) -> dict[str, list[Field]]:
        return {
            "trajectory": trajectory_fields(),
            "robot": robot_fields(),
            "policy": policy_fields(POLICY_RING),
            "control": control_fields(self.control_ring),
            "command": command_fields(),
            "world": world_fields(self.world_size),
        }

    def attach(self, keys: Sequence[str]) -> dict[str, ShmBlock]:
        specs = self.specs()
        return {key: ShmBlock(self.names[key], specs[key], create=False) for key in keys}

    def create(self) -> dict[str, ShmBlock]:
        return {
            key: ShmBlock(self.names[key], spec, create=True) for key, spec in self.specs().items()
        }


def command_fields() -> list[Field]:
    """Supervisor → children: shutdown, reset and fault injection."""
    return [
        Field("shutdown", (1,), "int64"),
        Field("reset", (1,), "int64"),  # a counter: each increment asks for one reset
        Field("fault", (1,), "int64"),
        Field("fault_t", (1,)),
        Field("policy_exited", (1,), "int64"),  # the supervisor saw the policy process end
    ]
