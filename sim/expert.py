"""The scripted expert for the touch task: a Cartesian feedback law turned into joint chunks by IK.

Each call plans from where the arm *is* (measured joints) to where the target cube is, so the
expert recovers from disturbances: demonstrations recorded with perturbed execution (DART) teach
the policy to come back to the path rather than only to follow it.

The path: close the gripper into a pointer and move the fingertips toward the cube's top along a
funnel: the height goal falls from hover height to just below the top as the fingertips line up
with the cube (straight-line steps, speed-limited, slowing near the goal).
The tool keeps pointing down with the start pose's yaw. Inverse kinematics is damped least squares
on the runtime's own forward kinematics (the simulator is built from the same DH table), warm
started from the previous chunk row, so consecutive rows stay on one IK branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgevla.runtime.kinematics import UR5E, InverseKinematics, RobotModel
from edgevla.sim.scene import CUBE_SIZE_M

# The closed fingertips lie this far beyond the flange along the tool axis (scene.py's fingers).
FINGERTIP_OFFSET_M = 0.10


@dataclass(frozen=True)
class ExpertConfig:
    speed_m_s: float = 0.25  # Cartesian cruise speed of the fingertips
    approach_time_s: float = 0.25  # speed falls off linearly within speed·this of a goal
    hover_above_m: float = 0.06  # fingertips above the cube top before descending
    press_m: float = 0.012  # aim this far below the cube top, so the touch is a contact
    align_tolerance_m: float = 0.01  # within this horizontally, the goal is the press height
    funnel_slope: float = 2.0  # beyond it, the goal rises 2 cm per cm of horizontal error
    gripper: float = 0.0  # closed: the two fingers form one pointer


class TouchExpert:
    """Plans the touch task's action chunks: [H, 7] absolute joint targets and gripper opening."""

    def __init__(
        self,
        cube_position: np.ndarray,
        chunk_len: int,
        step_period_s: float,
        config: ExpertConfig | None = None,
        model: RobotModel = UR5E,
    ) -> None:
        self.config = config or ExpertConfig()
        self.chunk_len = chunk_len
        self.step_s = step_period_s
        self.ik = InverseKinematics(model)
        self.cube = np.asarray(cube_position, dtype=float).copy()
        top = self.cube[2] + CUBE_SIZE_M / 2
        self.hover_z = top + self.config.hover_above_m
        self.press_z = top - self.config.press_m
        self.rotation: np.ndarray | None = None  # tool down, yaw of the first pose seen

    def _fingertips(self, pose: np.ndarray) -> np.ndarray:
        return pose[:3, 3] + FINGERTIP_OFFSET_M * pose[:3, 2]

    def _goal(self, tip: np.ndarray) -> np.ndarray:
        """Above the cube, at a height that falls as the fingertips line up with it.

        A funnel rather than "hover until aligned, then descend": the height goal is a smooth
        function of the horizontal error, so a policy that is a centimetre off still comes down
        (onto the cube's 4 cm top), instead of hovering until it is within a hard threshold no
        32-pixel image can resolve. Far from the cube the goal stays at hover height, so the
        fingers never sweep through a neighbouring cube.
        """
        c = self.config
        horizontal = float(np.linalg.norm(tip[:2] - self.cube[:2]))
        lowered = self.press_z + c.funnel_slope * max(0.0, horizontal - c.align_tolerance_m)
        z = min(self.hover_z, lowered)
        return np.array([self.cube[0], self.cube[1], z])

    def _advance(self, tip: np.ndarray) -> np.ndarray:
        goal = self._goal(tip)
        delta = goal - tip
        distance = float(np.linalg.norm(delta))
        if distance < 1e-9:
            return tip
        c = self.config
        speed = min(c.speed_m_s, distance / c.approach_time_s)
        return tip + delta * min(1.0, speed * self.step_s / distance)

    def plan(self, q: np.ndarray) -> np.ndarray:
        """The chunk from the measured joints `q` (row 0 is the present)."""
        pose = self.ik.fk.flange_pose(np.asarray(q[:6], dtype=float))
        if self.rotation is None:
            # Tool axis straight down; keep the start pose's heading of the tool's x axis.
            x = pose[:3, 0].copy()
            x[2] = 0.0
            x /= np.linalg.norm(x)
            z = np.array([0.0, 0.0, -1.0])
            self.rotation = np.column_stack([x, np.cross(z, x), z])
        chunk = np.zeros((self.chunk_len, 7), dtype=np.float32)
        tip = self._fingertips(pose)
        seed = np.asarray(q[:6], dtype=float)
        for k in range(self.chunk_len):
            if k > 0:
                tip = self._advance(tip)
            flange = tip - FINGERTIP_OFFSET_M * self.rotation[:, 2]
            seed, _ = self.ik.solve(flange, self.rotation, seed)
            chunk[k, :6] = seed
            chunk[k, 6] = self.config.gripper
        return chunk


@dataclass(frozen=True)
class ExpertPlan:
    chunk: np.ndarray  # [H, 7]


class ExpertAgent:
    """The `Agent` protocol of `sim.episode` for the scripted expert (privileged: it is told
    where the target cube is; the policy has to find it in the images)."""

    def __init__(
        self, chunk_len: int, step_period_s: float, config: ExpertConfig | None = None
    ) -> None:
        self.chunk_len = chunk_len
        self.step_s = step_period_s
        self.config = config or ExpertConfig()
        self._expert: TouchExpert | None = None

    def begin(self, episode, robot) -> None:  # Episode, SimRobot (sim.episode imports us)
        cube = robot.world.cube_positions()[episode.target]
        self._expert = TouchExpert(
            cube, self.chunk_len, self.step_s, self.config, robot.world.robot
        )

    def plan(self, obs, t_s: float) -> ExpertPlan:
        if self._expert is None:
            raise RuntimeError("begin() an episode before planning")
        return ExpertPlan(self._expert.plan(obs.state))

    def react(self, plan, step: int, obs, t_s: float) -> None:
        return None
