"""Tasks in the tabletop scene: what an episode asks for and how the simulator judges it.

`touch`: three cubes (red, green, blue) lie at seeded places; the instruction names one colour
("touch the green cube") and the episode succeeds the moment any part of the robot touches that
cube. Touching another cube first ends the episode as a failure: the colour word is the only
thing that tells the cubes apart, so a policy that ignores the instruction scores about a third.

An episode is fully determined by its seed: the cube layout (`scene.cube_layout(seed)`), the
target colour and a small perturbation of the start pose around home, so that a policy cannot
succeed by replaying one trajectory.

Seeds: demonstrations use seeds below `HELD_OUT_SEED_BASE`; evaluation uses seeds from it up, so
no evaluated layout was ever seen in training. Settings are chosen on validation seeds (from
`VALIDATION_SEED_BASE`), so the held-out results are not also the ones a setting was picked on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from edgevla.sim.scene import CUBE_COLOURS, HOME_Q, cube_names
from edgevla.sim.world import SimWorld

HELD_OUT_SEED_BASE = 1_000_000
TOUCH_INSTRUCTION = "touch the {colour} cube"
START_POSE_SPREAD_RAD = 0.08  # per joint, uniform ±; keeps the flange well above the cubes


class Outcome(enum.Enum):
    RUNNING = "running"
    SUCCESS = "success"
    WRONG_OBJECT = "wrong_object"  # touched a cube the instruction did not name
    TIMEOUT = "timeout"
    TRIP = "trip"  # the safety filter or the robot stopped the episode


@dataclass(frozen=True)
class Episode:
    """Everything that defines one episode of the touch task."""

    seed: int
    target: str  # colour of the cube to touch
    instruction: str
    initial_q: tuple[float, ...]
    initial_gripper: float = 1.0

    @property
    def scene_seed(self) -> int:
        return self.seed


def touch_episode(seed: int) -> Episode:
    """The touch-task episode of `seed`: target colour and start pose drawn from the seed."""
    if seed < 0:
        raise ValueError(f"episode seeds are >= 0, got {seed}")
    # A stream of its own, apart from the one `cube_layout` draws the layout from.
    rng = np.random.default_rng([seed, 0x70C4])
    colours = list(CUBE_COLOURS)
    target = colours[int(rng.integers(len(colours)))]
    offset = rng.uniform(-START_POSE_SPREAD_RAD, START_POSE_SPREAD_RAD, size=6)
    q0 = tuple(float(v) for v in np.asarray(HOME_Q) + offset)
    return Episode(seed, target, TOUCH_INSTRUCTION.format(colour=target), q0)


# Validation episodes for choosing settings (θ1, N, ...) before the held-out evaluation: in the
# training range but apart from demonstrations (from 0) and value rollouts (from 100 000).
VALIDATION_SEED_BASE = 200_000
SPLITS = ("held-out", "validation")


def held_out_seeds(start: int, count: int) -> list[int]:
    """Evaluation seeds: `count` seeds from `HELD_OUT_SEED_BASE + start`."""
    return [HELD_OUT_SEED_BASE + start + i for i in range(count)]


def split_seeds(split: str, start: int, count: int) -> list[int]:
    """`count` seeds of a split: "held-out" (reported results) or "validation" (tuning)."""
    if split == "held-out":
        return held_out_seeds(start, count)
    if split == "validation":
        if start + count > HELD_OUT_SEED_BASE - VALIDATION_SEED_BASE:
            raise ValueError("validation seeds would run into the held-out range")
        return [VALIDATION_SEED_BASE + start + i for i in range(count)]
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


class TouchJudge:
    """Decides the touch task's outcome from the world's contacts (no allocation per check)."""

    def __init__(self, world: SimWorld, target: str) -> None:
        m = world.model
        self.world = world
        self.target = target
        arm_bodies = {
            m.body(name).id
            for name in (
                "shoulder_link",
                "upper_arm_link",
                "forearm_link",
                "wrist_1_link",
                "wrist_2_link",
                "wrist_3_link",
                "gripper",
                "finger_left",
                "finger_right",
            )
        }
        self._robot_geoms = {g for g in range(m.ngeom) if int(m.geom_bodyid[g]) in arm_bodies}
        self._cube_geom = {
            m.geom(f"{name}_geom").id: name.removesuffix("_cube") for name in cube_names()
        }
        if target not in set(self._cube_geom.values()):
            raise ValueError(f"no {target!r} cube in the scene")

    def touched(self) -> str | None:
        """The colour of a cube the robot touches now, the target first if it touches several."""
        data = self.world.data
        touched: str | None = None
        for i in range(data.ncon):
            contact = data.contact[i]
            g1, g2 = int(contact.geom1), int(contact.geom2)
            for robot, other in ((g1, g2), (g2, g1)):
                if robot in self._robot_geoms and other in self._cube_geom:
                    colour = self._cube_geom[other]
                    if colour == self.target:
                        return colour
                    touched = colour
        return touched

    def judge(self) -> Outcome:
        touched = self.touched()
        if touched is None:
            return Outcome.RUNNING
        return Outcome.SUCCESS if touched == self.target else Outcome.WRONG_OBJECT


def touch_target(instruction: str) -> str | None:
    """The colour a touch instruction names ("touch the red cube" → "red"), else None."""
    words = instruction.lower().split()
    if words[:1] != ["touch"] or "cube" not in words:
        return None
    named = [w for w in words if w in CUBE_COLOURS]
    return named[0] if len(named) == 1 else None


class TaskMonitor:
    """Judges the touch task during `edgevla run` on the simulated robot, from outside the loop.

    The control process publishes the world's qpos for the cameras; this poses a mirror world
    from it, lets MuJoCo find the contacts, and latches the first outcome. It reads shared memory
    only, so the control loop carries no task code.
    """

    def __init__(self, world: SimWorld, target: str, instruction: str) -> None:
        self.world = world
        self.judge = TouchJudge(world, target)
        self.target = target
        self.instruction = instruction
        self.outcome = Outcome.RUNNING
        self.t_s: float | None = None
        self._qpos = np.zeros(world.state_size)

    def poll(self, read_qpos, t_s: float) -> Outcome:
        """`read_qpos(out)` fills the published qpos; `t_s` is the run time to stamp an outcome."""
        if self.outcome is not Outcome.RUNNING:
            return self.outcome
        read_qpos(self._qpos)
        self.world.set_world_state(self._qpos)
        outcome = self.judge.judge()
        if outcome is not Outcome.RUNNING:
            self.outcome, self.t_s = outcome, t_s
        return self.outcome

    def report(self) -> dict[str, object]:
        return {
            "task": "touch",
            "instruction": self.instruction,
            "target": self.target,
            "outcome": self.outcome.value,
            "t_s": None if self.t_s is None else round(self.t_s, 3),
        }
