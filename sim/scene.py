"""MJCF of the tabletop scene: a UR5e written from its DH table, a parallel gripper, three cubes.

The arm is the DH table itself, so the simulator's flange pose is exactly what
`edgevla.runtime.kinematics.ForwardKinematics` computes (the tests hold it to 1e-6 m). Link
geometry is a stick model along the DH segments: UR's real shoulder and elbow offsets cancel out
in the DH parameters, so the capsules sit on the kinematic skeleton rather than on the casting.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import mujoco
import numpy as np

from edgevla.runtime.kinematics import UR5E, RobotModel

ARM_JOINTS = (
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
)
ARM_ACTUATORS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
_LINKS = (
    "shoulder_link",
    "upper_arm_link",
    "forearm_link",
    "wrist_1_link",
    "wrist_2_link",
    "wrist_3_link",
)
GRIPPER_JOINTS = ("finger_left_joint", "finger_right_joint")
GRIPPER_ACTUATOR = "gripper"
FLANGE_SITE = "flange"
GRASP_SITE = "grasp"  # between the fingertips: where a grasped cube's centre ends up
SCENE_CAMERA = "scene"
WRIST_CAMERA = "wrist"

HOME_Q = (0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0)

CUBE_COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "green": (0.12, 0.70, 0.20, 1.0),
    "blue": (0.12, 0.25, 0.85, 1.0),
}
CUBE_SIZE_M = 0.04
# In UR's base frame "in front of the robot" is -x (the home pose's flange is at x ≈ -0.49).
CUBE_X_RANGE_M = (-0.65, -0.35)
CUBE_Y_RANGE_M = (-0.35, 0.15)
CUBE_MIN_SPACING_M = 0.09  # centre to centre: a finger fits between two cubes
MAX_REACH_M = 0.85  # UR5e's published reach, measured from the shoulder joint

FINGER_MAX_HALF_GAP_M = 0.0425  # fully open gap 85 mm, like a Robotiq 2F-85


@dataclass(frozen=True)
class SceneExtras:
    """Additions to the tabletop scene (calibration's board and hidden camera): MJCF fragments
    for the asset list, the world body and the gripper body (the flange frame), the files the
    assets name, and the smallest offscreen buffer the extras render into."""

    assets: str = ""
    world: str = ""
    gripper: str = ""
    files: dict[str, bytes] = field(default_factory=dict, hash=False, compare=False)
    buffer: tuple[int, int] = (0, 0)


# UR5e link masses as published by UR (kg).
_LINK_MASS_KG = (3.761, 8.058, 2.846, 1.37, 1.3, 0.365)
_LINK_RADIUS_M = (0.06, 0.054, 0.045, 0.038, 0.038, 0.032)
# Reflected rotor inertia of the harmonic drives: it dominates the wrist joints' inertia and keeps
# the servo's bandwidth from swinging with the arm's configuration.
_ARMATURE_KG_M2 = (0.4, 0.4, 0.25, 0.08, 0.08, 0.08)
# Servo bandwidth at the stretched-out pose (the largest inertia each joint sees); `dampratio`
# sets each joint's damping for a critically damped response at that pose. With velocity
# feed-forward (`edgevla.sim.servo`) this tracks a 1 rad/s motion within a fraction of a mrad;
# the torque limits bound what it can demand.
SERVO_BANDWIDTH_HZ = 30.0
_TORQUE_LIMIT_NM = (150.0, 150.0, 150.0, 28.0, 28.0, 28.0)


def cube_names() -> tuple[str, ...]:
    """Body names of the cubes, in `CUBE_COLOURS` order ("red_cube", ...)."""
    return tuple(f"{colour}_cube" for colour in CUBE_COLOURS)


def _f(values: tuple[float, ...] | list[float] | np.ndarray) -> str:
    return " ".join(f"{float(v):.9g}" for v in values)


def _quat_rx(angle: float) -> tuple[float, float, float, float]:
    return (math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0)


def _look_at(pos: np.ndarray, target: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera x and y axes for a camera at `pos` looking at `target` (MuJoCo looks along -z)."""
    forward = target - pos
    forward = forward / np.linalg.norm(forward)
    x = np.cross(forward, up)
    x /= np.linalg.norm(x)
    y = np.cross(x, forward)
    return x, y


def cube_layout(seed: int, robot: RobotModel = UR5E) -> dict[str, tuple[float, float, float]]:
    """Seeded cube placements on the table: {colour: (x, y, yaw)}, apart and within reach."""
    rng = np.random.default_rng(seed)
    shoulder = np.array([0.0, 0.0, robot.d[0]])
    placed: dict[str, tuple[float, float, float]] = {}
    for colour in CUBE_COLOURS:
        for _ in range(10_000):
            x = rng.uniform(*CUBE_X_RANGE_M)
            y = rng.uniform(*CUBE_Y_RANGE_M)
            # The gripper grasps a cube with the flange a tool length above it.
            grasp_flange = np.array([x, y, CUBE_SIZE_M + 0.12])
            if np.linalg.norm(grasp_flange - shoulder) >= MAX_REACH_M:
                continue
            apart = (
                math.hypot(x - px, y - py) >= CUBE_MIN_SPACING_M for px, py, _ in placed.values()
            )
            if all(apart):
                placed[colour] = (x, y, rng.uniform(-math.pi / 4, math.pi / 4))
                break
        else:  # pragma: no cover - the ranges leave ample room for three cubes
            raise RuntimeError(f"could not place the {colour} cube for seed {seed}")
    return placed


def _arm_xml(robot: RobotModel, gripper_extra: str = "") -> str:
    """Nested bodies, one per DH row: body i turns about its z; row i places body i+1."""
    lo, hi = robot.joint_min_rad, robot.joint_max_rad
    opening = "\n"
    closing = ""
    indent = "    "
    for i in range(6):
        pad = indent * (i + 2)
        if i == 0:
            pos, quat = (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0)
        else:
            pos, quat = (robot.a[i - 1], 0.0, robot.d[i - 1]), _quat_rx(robot.alpha[i - 1])
        seg_end = (robot.a[i], 0.0, robot.d[i])
        # The shoulder link only spins about the vertical: it cannot reach the table, and its
        # capsule would otherwise sit in the tabletop it is bolted to.
        collide = 'contype="0" conaffinity="0"' if i == 0 else 'class="arm"'
        opening += (
            f'{pad}<body name="{_LINKS[i]}" pos="{_f(pos)}" quat="{_f(quat)}" gravcomp="1">\n'
            f'{pad}  <joint name="{ARM_JOINTS[i]}" axis="0 0 1" range="{lo[i]:.9g} {hi[i]:.9g}"'
            f' armature="{_ARMATURE_KG_M2[i]}" damping="0.5"/>\n'
            f'{pad}  <geom name="{_LINKS[i]}_geom" type="capsule" fromto="0 0 0 {_f(seg_end)}"'
            f' size="{_LINK_RADIUS_M[i]}" mass="{_LINK_MASS_KG[i]}" material="arm" {collide}/>\n'
        )
        closing = f"{pad}</body>\n" + closing
    flange = (robot.a[5], 0.0, robot.d[5])
    pad = indent * 8
    opening += (
        f'{pad}<site name="{FLANGE_SITE}" pos="{_f(flange)}"'
        f' quat="{_f(_quat_rx(robot.alpha[5]))}" size="0.005"/>\n'
        f'{pad}<body name="gripper" pos="{_f(flange)}" quat="{_f(_quat_rx(robot.alpha[5]))}"'
        ' gravcomp="1">\n'
        f"{_gripper_xml(pad + indent)}{gripper_extra}"
        f"{pad}</body>\n"
    )
    return opening + closing


def _gripper_xml(pad: str) -> str:
    """Palm plus two fingers sliding apart along the gripper's y; the tool axis is its z."""
    cam_pos = np.array([0.065, 0.0, 0.03])
    cam_x, cam_y = _look_at(cam_pos, np.array([0.0, 0.0, 0.30]), np.array([1.0, 0.0, 0.0]))
    finger = (
        '{pad}<body name="finger_{side}" pos="0 0 0.05" gravcomp="1">\n'
        '{pad}  <joint name="finger_{side}_joint" type="slide" axis="0 {sign} 0"'
        ' range="0 {max_gap}" damping="2"/>\n'
        '{pad}  <geom name="finger_{side}_geom" type="box" pos="0 {sign_y} 0.025"'
        ' size="0.011 0.006 0.025" mass="0.05" material="finger" class="arm" friction="1.5 0.02'
        ' 0.002" condim="4"/>\n'
        "{pad}</body>\n"
    )
    fingers = "".join(
        finger.format(
            pad=pad,
            side=side,
            sign=sign,
            sign_y=f"{0.006 * sign:.9g}",
            max_gap=f"{FINGER_MAX_HALF_GAP_M:.9g}",
        )
        for side, sign in (("left", 1), ("right", -1))
    )
    return (
        f'{pad}<geom name="coupling" type="cylinder" fromto="0 0 0 0 0 0.02" size="0.037"'
        ' mass="0.15" material="finger" class="arm"/>\n'
        f'{pad}<geom name="palm" type="box" pos="0 0 0.035" size="0.025 0.055 0.015" mass="0.6"'
        ' material="gripper" class="arm"/>\n'
        f'{pad}<site name="{GRASP_SITE}" pos="0 0 0.085" size="0.004"/>\n'
        f'{pad}<camera name="{WRIST_CAMERA}" pos="{_f(cam_pos)}"'
        f' xyaxes="{_f(cam_x)} {_f(cam_y)}" fovy="70"/>\n'
        f"{fingers}"
    )


def _cubes_xml(seed: int, robot: RobotModel) -> str:
    half = CUBE_SIZE_M / 2
    layout = cube_layout(seed, robot)
    out = ""
    for (colour, rgba), name in zip(CUBE_COLOURS.items(), cube_names(), strict=True):
        x, y, yaw = layout[colour]
        out += (
            f'    <body name="{name}" pos="{x:.9g} {y:.9g} {half:.9g}"'
            f' euler="0 0 {yaw:.9g}">\n'
            f'      <freejoint name="{name}_joint"/>\n'
            f'      <geom name="{name}_geom" type="box" size="{half} {half} {half}" mass="0.05"'
            f' rgba="{_f(rgba)}" friction="1 0.02 0.002" condim="4"/>\n'
            "    </body>\n"
        )
    return out


def _home_keyframe(seed: int, robot: RobotModel) -> str:
    """qpos in model order: arm, fingers (open), then each cube's free joint (pos, quat)."""
    qpos = [*HOME_Q, FINGER_MAX_HALF_GAP_M, FINGER_MAX_HALF_GAP_M]
    for x, y, yaw in cube_layout(seed, robot).values():
        qpos += [x, y, CUBE_SIZE_M / 2, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
    ctrl = [*HOME_Q, FINGER_MAX_HALF_GAP_M]
    return f'    <key name="home" qpos="{_f(qpos)}" ctrl="{_f(ctrl)}"/>\n'


def _actuators_xml(robot: RobotModel, kp: tuple[float, ...]) -> str:
    out = ""
    for i in range(6):
        lo, hi = robot.joint_min_rad[i], robot.joint_max_rad[i]
        tau = _TORQUE_LIMIT_NM[i]
        out += (
            f'    <position name="{ARM_ACTUATORS[i]}" joint="{ARM_JOINTS[i]}" kp="{kp[i]:.9g}"'
            f' dampratio="1" ctrlrange="{lo:.9g} {hi:.9g}" forcerange="{-tau} {tau}"/>\n'
        )
    out += (
        f'    <position name="{GRIPPER_ACTUATOR}" joint="{GRIPPER_JOINTS[0]}" kp="400"'
        f' dampratio="1" ctrlrange="0 {FINGER_MAX_HALF_GAP_M:.9g}" forcerange="-25 25"/>\n'
    )
    return out


def build_scene_xml(
    robot: RobotModel = UR5E, seed: int = 0, image_size: int = 96, extras: SceneExtras | None = None
) -> str:
    """The whole scene as an MJCF string; `seed` places the cubes, `image_size` sizes buffers."""
    return _scene_xml(robot, seed, image_size, _servo_kp(robot), extras or SceneExtras())


@functools.lru_cache(maxsize=8)
def _servo_kp(robot: RobotModel) -> tuple[float, ...]:
    """kp = I·ω² from the compiled arm's joint-space inertia at the zero pose (arm stretched)."""
    model = mujoco.MjModel.from_xml_string(_scene_xml(robot, 0, 64, (1.0,) * 6, SceneExtras()))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    omega = 2.0 * math.pi * SERVO_BANDWIDTH_HZ
    inertia = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, data, inertia)  # the diagonal includes the armature
    dofs = [model.jnt_dofadr[model.joint(name).id] for name in ARM_JOINTS]
    return tuple(float(inertia[dof, dof]) * omega**2 for dof in dofs)


def _scene_xml(
    robot: RobotModel, seed: int, image_size: int, kp: tuple[float, ...], extras: SceneExtras
) -> str:
    scene_cam = np.array([-1.05, -0.75, 0.75])
    cam_x, cam_y = _look_at(scene_cam, np.array([-0.3, -0.06, 0.18]), np.array([0.0, 0.0, 1.0]))
    width = max(int(image_size), 64, extras.buffer[0])
    height = max(int(image_size), 64, extras.buffer[1])
    return f"""<mujoco model="edgevla_{robot.name}_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{robot.period_s:.9g}" integrator="implicitfast"/>
  <visual>
    <global offwidth="{width}" offheight="{height}"/>
    <quality shadowsize="1024"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.4 0.4 0.4" specular="0 0 0"/>
  </visual>
  <default>
    <default class="arm">
      <geom contype="2" conaffinity="1"/>
    </default>
    <geom contype="1" conaffinity="3"/>
  </default>
  <asset>
    <texture name="floor" type="2d" builtin="checker" rgb1="0.32 0.34 0.36"
      rgb2="0.26 0.28 0.30" width="256" height="256"/>
    <material name="floor" texture="floor" texrepeat="8 8"/>
    <material name="table" rgba="0.62 0.50 0.38 1"/>
    <material name="arm" rgba="0.72 0.75 0.78 1"/>
    <material name="gripper" rgba="0.18 0.18 0.20 1"/>
    <material name="finger" rgba="0.30 0.30 0.33 1"/>
{extras.assets}  </asset>
  <worldbody>
    <light name="key" pos="-0.6 -0.4 2.2" dir="0.2 0.1 -1" diffuse="0.7 0.7 0.7"
      castshadow="true"/>
    <light name="fill" pos="-1.5 1.0 1.5" dir="0.6 -0.4 -0.6" diffuse="0.25 0.25 0.25"
      castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" material="floor"/>
    <geom name="table" type="box" pos="-0.35 -0.05 -0.02" size="0.6 0.6 0.02" material="table"/>
    <geom name="table_stand" type="box" pos="-0.35 -0.05 -0.39" size="0.55 0.55 0.35"
      rgba="0.45 0.36 0.28 1" contype="0" conaffinity="0"/>
    <geom name="base" type="cylinder" fromto="0 0 0 0 0 0.07" size="0.075" material="arm"
      contype="0" conaffinity="0"/>
    <camera name="{SCENE_CAMERA}" pos="{_f(scene_cam)}" xyaxes="{_f(cam_x)} {_f(cam_y)}"
      fovy="55"/>
{extras.world}{_arm_xml(robot, extras.gripper)}{_cubes_xml(seed, robot)}  </worldbody>
  <equality>
    <joint joint1="{GRIPPER_JOINTS[1]}" joint2="{GRIPPER_JOINTS[0]}" polycoef="0 1 0 0 0"/>
  </equality>
  <actuator>
{_actuators_xml(robot, kp)}  </actuator>
  <keyframe>
{_home_keyframe(seed, robot)}  </keyframe>
</mujoco>
"""
