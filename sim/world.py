"""The MuJoCo model and data of the scene, with the index bookkeeping everything else needs.

`SimWorld` knows nothing about time or faults: `SimRobot` decides when to step it and what the
servo targets are; cameras mirror its `qpos` (`world_state`) into models of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np

from edgevla.runtime.kinematics import UR5E, RobotModel
from edgevla.sim.scene import (
    ARM_ACTUATORS,
    ARM_JOINTS,
    FINGER_MAX_HALF_GAP_M,
    FLANGE_SITE,
    GRASP_SITE,
    GRIPPER_ACTUATOR,
    GRIPPER_JOINTS,
    HOME_Q,
    SceneExtras,
    build_scene_xml,
    cube_names,
)


def _contiguous(indices: Sequence[int], what: str) -> slice:
    """A slice over `indices`: slices of MjData arrays are views, so reads allocate nothing."""
    first = int(indices[0])
    if list(indices) != list(range(first, first + len(indices))):
        raise ValueError(f"{what} are not contiguous in the model: {list(indices)}")
    return slice(first, first + len(indices))


class SimWorld:
    """MjModel + MjData of the tabletop scene and where the arm, gripper and cubes live in them."""

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 96,
        robot: RobotModel = UR5E,
        extras: SceneExtras | None = None,
    ) -> None:
        self.seed = seed
        self.robot = robot
        self.xml = build_scene_xml(robot, seed=seed, image_size=image_size, extras=extras)
        files = extras.files if extras is not None else {}
        self.model = mujoco.MjModel.from_xml_string(self.xml, files)
        self.data = mujoco.MjData(self.model)
        m = self.model

        joint_ids = [m.joint(name).id for name in ARM_JOINTS]
        self.arm_qpos = _contiguous([m.jnt_qposadr[j] for j in joint_ids], "arm qpos addresses")
        self.arm_dof = _contiguous([m.jnt_dofadr[j] for j in joint_ids], "arm dof addresses")
        self.arm_actuators = _contiguous(
            [m.actuator(name).id for name in ARM_ACTUATORS], "arm actuators"
        )
        self.finger_qpos = int(m.jnt_qposadr[m.joint(GRIPPER_JOINTS[0]).id])
        self.gripper_actuator = int(m.actuator(GRIPPER_ACTUATOR).id)
        self.flange_site = int(m.site(FLANGE_SITE).id)
        self.grasp_site = int(m.site(GRASP_SITE).id)
        self.cube_qpos = {
            name.removesuffix("_cube"): int(m.jnt_qposadr[m.body(name).jntadr[0]])
            for name in cube_names()
        }
        self._home_key = int(m.key("home").id)

        # Views into MjData: they stay valid for the life of `data` (resets write in place).
        self.q = self.data.qpos[self.arm_qpos]
        self.qd = self.data.qvel[self.arm_dof]
        self.arm_ctrl = self.data.ctrl[self.arm_actuators]
        # A position servo's force is kp·(ctrl − q) − kv·q̇; feeding velocity forward means adding
        # (kv/kp)·q̇_target to ctrl, so the servo needs each joint's kv/kp.
        kp = m.actuator_gainprm[self.arm_actuators, 0]
        kv = -m.actuator_biasprm[self.arm_actuators, 2]
        self.servo_lead_s = kv / kp
        self.reset()

    @property
    def state_size(self) -> int:
        """Length of the buffer `world_state` fills (the model's nq)."""
        return int(self.model.nq)

    @property
    def timestep_s(self) -> float:
        return float(self.model.opt.timestep)

    def world_state(self, out: np.ndarray) -> float:
        """Copy the full qpos into `out` (length `state_size`); return the simulation time."""
        out[:] = self.data.qpos
        return float(self.data.time)

    def set_world_state(self, qpos: np.ndarray) -> None:
        """Pose every body from another world's `world_state` (for render mirrors)."""
        self.data.qpos[:] = qpos
        mujoco.mj_forward(self.model, self.data)

    def step(self, n: int = 1) -> None:
        mujoco.mj_step(self.model, self.data, nstep=n)

    def gripper_opening(self) -> float:
        """Measured finger gap as 0 (closed) .. 1 (open)."""
        return float(self.data.qpos[self.finger_qpos]) / FINGER_MAX_HALF_GAP_M

    def set_gripper_target(self, opening: float) -> None:
        opening = min(max(float(opening), 0.0), 1.0)
        self.data.ctrl[self.gripper_actuator] = opening * FINGER_MAX_HALF_GAP_M

    def cube_positions(self) -> dict[str, np.ndarray]:
        """Cube centres by colour, metres in the robot's base frame (copies)."""
        return {c: self.data.qpos[adr : adr + 3].copy() for c, adr in self.cube_qpos.items()}

    def flange_position(self) -> np.ndarray:
        """Flange position in the base frame, as of the last step or forward pass (copy)."""
        return self.data.site_xpos[self.flange_site].copy()

    def grasp_position(self) -> np.ndarray:
        """The point between the fingertips where a grasped cube's centre sits (copy)."""
        return self.data.site_xpos[self.grasp_site].copy()

    def reset(self, q_arm: Sequence[float] | np.ndarray = HOME_Q, gripper: float = 1.0) -> None:
        """Back to the seeded scene with the arm at rest at `q_arm`, servo targets equal to it.

        The cubes return to their seeded places and the simulation time to zero.
        """
        mujoco.mj_resetDataKeyframe(self.model, self.data, self._home_key)
        self.q[:] = q_arm
        opening = min(max(float(gripper), 0.0), 1.0)
        self.data.qpos[self.finger_qpos : self.finger_qpos + 2] = opening * FINGER_MAX_HALF_GAP_M
        self.data.qvel[:] = 0.0
        self.arm_ctrl[:] = self.q
        self.set_gripper_target(opening)
        mujoco.mj_forward(self.model, self.data)
