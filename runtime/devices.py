"""Device protocols: what the control and policy processes need from a robot, camera and MCU.

One real implementation per device (ur_rtde, pyrealsense2, pyserial) and one simulated one
(`edgevla.sim`) sit behind these. Readings are written into caller-owned buffers so that the
control loop allocates nothing per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import numpy as np

from edgevla.runtime.errors import EdgeVlaError


class SafetyMode(IntEnum):
    """UR controller safety modes (RTDE `safety_mode`)."""

    NORMAL = 1
    REDUCED = 2
    PROTECTIVE_STOP = 3
    RECOVERY = 4
    SAFEGUARD_STOP = 5
    SYSTEM_EMERGENCY_STOP = 6
    ROBOT_EMERGENCY_STOP = 7
    VIOLATION = 8
    FAULT = 9


class RobotDisconnected(EdgeVlaError):
    """The connection to the robot controller is gone."""


class CameraTimeout(EdgeVlaError):
    """No frame arrived within the deadline."""


class CameraNotFound(EdgeVlaError):
    """The configured camera (serial number or recording) is not there."""


class IntrinsicsMismatch(EdgeVlaError):
    """The camera streams at another resolution than its calibration was made for."""


@dataclass
class RobotState:
    """One reading of the arm. `read_state` fills it in place."""

    t_s: float = 0.0  # host monotonic time of the reading
    q: np.ndarray = field(default_factory=lambda: np.zeros(6))  # joint positions, rad
    qd: np.ndarray = field(default_factory=lambda: np.zeros(6))  # joint velocities, rad/s
    gripper: float = 0.0  # opening, 0 closed .. 1 open
    safety_mode: int = SafetyMode.NORMAL
    program_running: bool = True
    # How much older than usual the reading is: the controller's sample time against the host's
    # clock, less the link's best latency (0 where the robot is read directly, as in the sim).
    age_s: float = 0.0


class Robot(Protocol):
    """An arm that takes one joint-position setpoint per servo period."""

    period_s: float

    def connect(self) -> None: ...

    def read_state(self, out: RobotState) -> None:
        """Fill `out`; raises RobotDisconnected when the controller is unreachable."""

    def servo(self, q: np.ndarray, gripper: float) -> None:
        """Send the setpoint for this period (it also kicks the robot-side watchdog)."""

    def stop(self) -> None:
        """Ask the robot to stop on its own (servoStop); safe to call at any time."""

    def set_watchdog(self, min_frequency_hz: float) -> None:
        """Robot-side watchdog: the arm stops by itself if servo calls come less often."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Frame:
    """One colour image with its identity and its capture time on the host's monotonic clock."""

    image: np.ndarray  # uint8 [H, W, 3], RGB
    frame_number: int
    t_capture_s: float
    t_arrival_s: float  # host monotonic time the driver had it (a simulated frame: = capture)
    depth_m: np.ndarray | None = None  # float32 [H, W], metres, aligned to `image`; 0: no data


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of one stream, valid only at its own resolution."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str = "none"  # distortion model, librealsense's name for it
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def check_resolution(self, width: int, height: int, what: str) -> None:
        """Refuse intrinsics of another resolution: fx, ppx... scale with it (NOTES.md)."""
        if (self.width, self.height) != (width, height):
            raise IntrinsicsMismatch(
                f"{what}: the camera streams {self.width}x{self.height} but its calibration is"
                f" for {width}x{height}; set cameras.width/height to the calibrated resolution"
                " or calibrate again at this one"
            )


class Camera(Protocol):
    name: str

    def start(self) -> None: ...

    def read(self, timeout_s: float) -> Frame:
        """The next frame; raises CameraTimeout if none arrives within `timeout_s`."""

    def stop(self) -> None: ...


@dataclass
class McuStatus:
    t_last_heartbeat_s: float = 0.0  # host monotonic time the MCU's last heartbeat arrived
    estop_pressed: bool = False
    enable: bool = False  # the MCU's enable output to the robot's safety input
    fault: int = 0


class SafetyMcu(Protocol):
    """The safety microcontroller: heartbeats both ways, e-stop state, the robot-enable line."""

    def arm(self) -> None:
        """Called once, right before the first control cycle: raise the enable output. From
        here on heartbeats must keep coming, or the MCU drops it again."""

    def heartbeat(self, t_s: float) -> None:
        """Host heartbeat; the MCU drops enable if these stop."""

    def read_status(self, out: McuStatus) -> None: ...

    def close(self) -> None: ...
