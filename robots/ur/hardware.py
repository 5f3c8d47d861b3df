"""Wiring of a UR arm for `edgevla run` (robot.kind = "ur").

The arm is `URRobot` over ur_rtde, at `robot.host`: a real controller, URSim, or
`edgevla ur-emulator`. The cameras follow `cameras.kind`: RealSense cameras (or recordings),
or with "sim" a kinematic twin of the cell, the seeded scene with the arm posed at the joint
positions the controller reports (a dry run sees the arm move where the controller says it is).
Until the firmware bridge lands the MCU is the simulated one, unwired (a real cell wires the
MCU's enable line to the robot's safety input in hardware).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgevla.robots.ur.driver import URConfig, URRobot
from edgevla.runtime.config import RuntimeConfig
from edgevla.runtime.devices import McuStatus, RobotState
from edgevla.runtime.faults import Fault
from edgevla.sim.mcu import SimSafetyMcu
from edgevla.sim.world import SimWorld

if TYPE_CHECKING:
    from edgevla.firmware_bridge.mcu import SerialSafetyMcu

log = logging.getLogger(__name__)


class TwinRobot:
    """`URRobot` that also records each reading for the kinematic twin."""

    def __init__(self, robot: URRobot) -> None:
        self.robot = robot
        self.period_s = robot.period_s
        self.last_q: np.ndarray | None = None
        self.last_gripper = 1.0

    def connect(self) -> None:
        self.robot.connect()
        self.period_s = self.robot.period_s

    def read_state(self, out: RobotState) -> None:
        self.robot.read_state(out)
        self.last_q = out.q.copy()
        self.last_gripper = out.gripper

    def servo(self, q: np.ndarray, gripper: float) -> None:
        self.robot.servo(q, gripper)

    def stop(self) -> None:
        self.robot.stop()

    def set_watchdog(self, min_frequency_hz: float) -> None:
        self.robot.set_watchdog(min_frequency_hz)

    def close(self) -> None:
        self.robot.close()


class KinematicTwin:
    """The seeded scene with the arm at the last reported joint positions (for the cameras)."""

    def __init__(self, config: RuntimeConfig, robot: TwinRobot) -> None:
        self.world = SimWorld(config.robot.scene_seed, robot=config.robot_model)
        self.world.reset(np.asarray(config.robot.initial_q_rad), config.robot.initial_gripper)
        self.robot = robot
        self._qpos = np.zeros(self.world.state_size)

    def world_state(self, out: np.ndarray) -> float:
        if self.robot.last_q is not None:
            self.world.world_state(self._qpos)
            self._qpos[self.world.arm_qpos] = self.robot.last_q
            self.world.set_world_state(self._qpos)
        return self.world.world_state(out)


class UnwiredMcu:
    """The safety MCU, its enable line not wired to anything we simulate (a real cell wires it
    to the robot's safety input)."""

    def __init__(self, mcu: SimSafetyMcu | SerialSafetyMcu) -> None:
        self.mcu = mcu

    def arm(self) -> None:
        self.mcu.arm()

    def heartbeat(self, t_s: float) -> None:
        self.mcu.heartbeat(t_s)

    def read_status(self, out: McuStatus) -> None:
        self.mcu.read_status(out)

    def close(self) -> None:
        self.mcu.close()


@dataclass
class URHardware:
    robot: TwinRobot
    mcu: UnwiredMcu
    world: KinematicTwin

    def inject(self, fault: Fault) -> None:
        """Robot faults cannot be injected into a real controller: inject them on the
        emulator (`URControllerEmulator.protective_stop`, `drop_connections`, …)."""
        if fault in (Fault.ESTOP, Fault.MCU_SILENT) and not isinstance(self.mcu.mcu, SimSafetyMcu):
            log.warning("fault %s is not injectable on a real MCU: press its e-stop", fault)
        elif fault is Fault.ESTOP:
            self.mcu.mcu.press_estop()
        elif fault is Fault.MCU_SILENT:
            self.mcu.mcu.go_silent()
        else:
            log.warning("fault %s is not injectable on a UR; inject it on the emulator", fault)

    def close(self) -> None:
        self.mcu.close()
        self.robot.close()


def make_ur_hardware(config: RuntimeConfig) -> URHardware:
    robot = TwinRobot(URRobot(URConfig(config.robot.host)))
    if config.mcu.kind == "serial":  # its enable line is wired to the robot in hardware
        from edgevla.firmware_bridge.mcu import connect_serial_mcu

        mcu = UnwiredMcu(connect_serial_mcu(config.mcu))
    else:
        mcu = UnwiredMcu(SimSafetyMcu(host_timeout_s=config.watchdog.mcu_heartbeat_timeout_s))
    mcu.heartbeat(0.0)
    mcu.read_status(McuStatus())
    return URHardware(robot, mcu, KinematicTwin(config, robot))
