"""Wiring of the simulated devices for `edgevla run`: robot, safety MCU and cameras.

The MCU's enable output is wired to the robot's safety input, as on the real cell: pressing the
e-stop or silencing the host drops enable and the arm goes into a safeguard stop by itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgevla.runtime.config import RuntimeConfig
from edgevla.runtime.devices import McuStatus
from edgevla.runtime.faults import Fault
from edgevla.runtime.shm import SeqLock, ShmBlock
from edgevla.sim.camera import SimCamera
from edgevla.sim.mcu import SimSafetyMcu
from edgevla.sim.robot import SimRobot
from edgevla.sim.world import SimWorld

if TYPE_CHECKING:
    from edgevla.firmware_bridge.mcu import SerialSafetyMcu

log = logging.getLogger(__name__)


class WiredMcu:
    """The `SafetyMcu` protocol over an MCU whose enable output drives the robot's safety input."""

    def __init__(self, mcu: SimSafetyMcu | SerialSafetyMcu, robot: SimRobot) -> None:
        self.mcu = mcu
        self.robot = robot

    def arm(self) -> None:
        self.mcu.arm()
        self.robot.set_enable_input(self.mcu.enable_line())

    def heartbeat(self, t_s: float) -> None:
        self.mcu.heartbeat(t_s)

    def read_status(self, out: McuStatus) -> None:
        self.mcu.read_status(out)
        self.robot.set_enable_input(self.mcu.enable_line())

    def close(self) -> None:
        self.mcu.close()


@dataclass
class SimHardware:
    robot: SimRobot
    mcu: WiredMcu

    @property
    def world(self) -> SimRobot:
        """Publishes the scene state for the cameras (advancing the physics to now first)."""
        return self.robot

    def inject(self, fault: Fault) -> None:
        """Robot-side faults; policy-side ones act in the policy process."""
        if fault is Fault.ROBOT_PSTOP:
            self.robot.inject_protective_stop()
        elif fault is Fault.ROBOT_DISCONNECT:
            self.robot.inject_disconnect()
        elif fault in (Fault.ESTOP, Fault.MCU_SILENT) and not isinstance(
            self.mcu.mcu, SimSafetyMcu
        ):
            log.warning("fault %s is not injectable on a real MCU: press its e-stop", fault)
        elif fault is Fault.ESTOP:
            self.mcu.mcu.press_estop()
        elif fault is Fault.MCU_SILENT:
            self.mcu.mcu.go_silent()

    def close(self) -> None:
        self.mcu.close()
        self.robot.close()


def make_sim_hardware(config: RuntimeConfig) -> SimHardware:
    robot = SimRobot(seed=config.robot.scene_seed, robot=config.robot_model)
    robot.reset(np.asarray(config.robot.initial_q_rad), config.robot.initial_gripper)
    if config.mcu.kind == "serial":
        # A real MCU (or the firmware on a pty) whose reported enable output drives the
        # simulated arm's safety input, as its pin would on a real cell.
        from edgevla.firmware_bridge.mcu import connect_serial_mcu

        device = connect_serial_mcu(config.mcu)
    else:
        device = SimSafetyMcu(host_timeout_s=config.watchdog.mcu_heartbeat_timeout_s)
    mcu = WiredMcu(device, robot)
    mcu.heartbeat(0.0)
    if isinstance(device, SimSafetyMcu):
        # Armed now as well as by the control process before its first cycle, so that a loop
        # built without `control_main` (tests, benchmarks) starts enabled. A real MCU is armed
        # only there: arming it here would let the set-up's silence time it out.
        mcu.arm()
    mcu.read_status(McuStatus())
    return SimHardware(robot, mcu)


def world_state_size(config: RuntimeConfig) -> int:
    return SimWorld(config.robot.scene_seed, robot=config.robot_model).state_size


def make_sim_cameras(config: RuntimeConfig, world: ShmBlock, image_size: int) -> list[SimCamera]:
    """Cameras that render the world state the control process publishes in shared memory."""
    lock = SeqLock(world)

    def source(out: np.ndarray) -> float:
        stamp = [0.0]

        def copy() -> None:
            out[:] = world.qpos
            stamp[0] = float(world.t[0])

        lock.read(copy)
        return stamp[0]

    return [
        SimCamera(
            name,
            name,
            source,
            fps=config.cameras.fps,
            image_size=image_size,
            seed=config.robot.scene_seed,
            robot=config.robot_model,
        )
        for name in config.cameras.names
    ]
