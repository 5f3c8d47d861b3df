"""The runtime's typed configuration, read from TOML. Units are in the key names.

Every key is known: an unknown key (a typo, or a unit the runtime does not use, such as
`max_velocity_deg_s`) fails at start with the key named and the nearest known key suggested.
Limits are checked against the robot model's own: a configured limit may tighten the robot's,
never loosen it. docs/runtime.md is the reference.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from edgevla.runtime.errors import ConfigError
from edgevla.runtime.kinematics import ROBOT_MODELS, RobotModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on Jetson
    import tomli as tomllib


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


_TAU = 2 * math.pi


def _six(value: float) -> tuple[float, ...]:
    return (value,) * 6


class LimitsConfig(_Section):
    """What the safety filter enforces on every commanded setpoint."""

    # Default: UR's own joint range (elbow ±π); `joint_margin_rad` keeps targets inside it.
    joint_min_rad: tuple[float, ...] = (-_TAU, -_TAU, -math.pi, -_TAU, -_TAU, -_TAU)
    joint_max_rad: tuple[float, ...] = (_TAU, _TAU, math.pi, _TAU, _TAU, _TAU)
    joint_margin_rad: float = 0.1
    max_velocity_rad_s: tuple[float, ...] = _six(1.0)
    max_acceleration_rad_s2: tuple[float, ...] = _six(4.0)
    max_jerk_rad_s3: tuple[float, ...] = _six(200.0)
    max_step_rad: float = 0.004
    # TCP (flange) box in the robot base frame; the table top is z = 0.
    workspace_min_m: tuple[float, ...] = (-0.9, -0.9, 0.02)
    workspace_max_m: tuple[float, ...] = (0.9, 0.9, 1.1)
    gripper_min: float = 0.0
    gripper_max: float = 1.0
    max_gripper_speed_per_s: float = 2.0


class WatchdogConfig(_Section):
    setpoint_hold_s: float = 0.1  # newest trajectory older than this: hold position
    setpoint_stop_s: float = 0.3  # ... older than this: trip, controlled stop
    camera_max_age_s: float = 0.3
    mcu_heartbeat_timeout_s: float = 0.1
    # Shortest of the policy deadlines, so a stopped or dead process is named as such.
    policy_heartbeat_timeout_s: float = 0.15
    robot_watchdog_min_hz: float = 50.0  # robot-side: the arm stops itself if we go silent
    # A robot reading older than this (delayed or stalled RTDE data, connection still up): trip.
    robot_state_max_age_s: float = 0.1
    startup_timeout_s: float = 120.0  # policy must be ready (bundle loaded, first plan) by then


class RobotConfig(_Section):
    kind: str = "sim"  # sim | ur
    model: str = "ur5e"  # ur5e | ur5
    host: str = "127.0.0.1"
    # SCHED_FIFO priority of the control process, when permitted; 0 leaves it unprivileged.
    realtime_priority: int = 80
    # CPUs for the control process alone (the policy process gets the others); empty: no pinning.
    control_cpus: tuple[int, ...] = ()
    initial_q_rad: tuple[float, ...] = (
        0.0,
        -math.pi / 2,
        math.pi / 2,
        -math.pi / 2,
        -math.pi / 2,
        0.0,
    )
    initial_gripper: float = 1.0
    scene_seed: int = 0  # sim only: the cube layout


class CamerasConfig(_Section):
    kind: str = "sim"  # sim | realsense (docs/realsense.md)
    names: tuple[str, ...] = ("scene", "wrist")
    fps: float = 30.0
    # realsense: one serial number per name (live cameras) or one .db3 recording per name,
    # played through the same rs.pipeline; never both.
    serials: tuple[str, ...] = ()
    recordings: tuple[str, ...] = ()
    loop_recordings: bool = False  # a recording that ends is a camera stall unless looped
    width: int = 640
    height: int = 480
    depth: bool = False  # also stream depth, aligned to colour
    stall_s: float = 0.5  # no frame for this long: the camera counts as stalled
    reconnect_deadline_s: float = 10.0  # each recovery attempt (stop, reset, find, start)
    hardware_reset: bool = True  # reset the device (USB re-enumeration) when recovering
    # realsense: one calibration file per name (`edgevla calib`), or none. A file for another
    # serial or resolution, or a tampered one, stops the run before anything moves.
    calibrations: tuple[str, ...] = ()


class McuConfig(_Section):
    kind: str = "sim"  # sim | serial (the edgevla firmware, docs/protocol.md)
    port: str = ""  # serial: e.g. /dev/serial/by-id/usb-...; a stable name, not /dev/ttyACM0
    baudrate: int = 115200
    heartbeat_hz: float = 100.0  # host heartbeats to the MCU (the protocol asks for >= 50)
    # serial: the MCU drops enable after this much host silence; 0: its default (100 ms)
    host_timeout_ms: int = 0


class PolicyConfig(_Section):
    bundle: str = "out/demo-bundle"
    instruction: str = "touch the red cube"
    system2_rate_hz: float = 5.0
    system1_rate_hz: float = 50.0
    system1_enabled: bool = True
    crossfade_s: float = 0.1  # new actions blend in over this span after the frozen part
    seed: int = 0
    intra_op_threads: int = 0
    # Activation steering: direction name (from the bundle) → alpha; empty runs unsteered.
    steer: dict[str, float] = {}


class RuntimeConfig(_Section):
    robot: RobotConfig = RobotConfig()
    cameras: CamerasConfig = CamerasConfig()
    mcu: McuConfig = McuConfig()
    policy: PolicyConfig = PolicyConfig()
    limits: LimitsConfig = LimitsConfig()
    watchdog: WatchdogConfig = WatchdogConfig()

    @property
    def robot_model(self) -> RobotModel:
        return ROBOT_MODELS[self.robot.model]


def _known_keys(struct: type[msgspec.Struct], prefix: str = "") -> list[str]:
    keys = []
    for name, kind in zip(struct.__struct_fields__, struct.__annotations__.values(), strict=False):
        keys.append(prefix + name)
        nested = getattr(sys.modules[__name__], str(kind), None)
        if isinstance(nested, type) and issubclass(nested, msgspec.Struct):
            keys.extend(_known_keys(nested, f"{prefix}{name}."))
    return keys


def _explain(exc: msgspec.ValidationError, source: str) -> ConfigError:
    text = str(exc)
    at = re.search(r"at `\$\.?([^`]*)`", text)
    section = at.group(1) if at else ""
    unknown = re.search(r"unknown field `([^`]*)`", text)
    if unknown:
        key = f"{section}.{unknown.group(1)}" if section else unknown.group(1)
        close = difflib.get_close_matches(key, _known_keys(RuntimeConfig), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        if re.search(r"_(deg|rad|s|ms|us|hz|m|mm|cm|per_s|s2|s3)$", key):
            hint += " (units are part of key names)"
        return ConfigError(f"{source}: unknown key '{key}'{hint}")
    key = section or "?"
    return ConfigError(f"{source}: key '{key}': {text.split(' - at ')[0]}")


def _check(ok: bool, key: str, message: str, source: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: key '{key}': {message}")


def _check_finite(config: RuntimeConfig, source: str) -> None:
    """No inf or NaN anywhere: an infinite limit disables it, an infinite timeout its trip."""
    for section, values in msgspec.structs.asdict(config).items():
        for key, value in msgspec.structs.asdict(values).items():
            items = value if isinstance(value, tuple) else (value,)
            for i, item in enumerate(items):
                if isinstance(item, float) and not math.isfinite(item):
                    where = ""
                    if isinstance(value, tuple):
                        where = f"joint {i}: " if len(value) == 6 else f"axis {'xyz'[i]}: "
                    raise ConfigError(
                        f"{source}: key '{section}.{key}': {where}{item} is not finite"
                    )


def validate(config: RuntimeConfig, source: str = "config") -> RuntimeConfig:
    """Semantic checks: lengths, ranges, and limits that contradict the robot's own."""
    _check_finite(config, source)
    if config.robot.model not in ROBOT_MODELS:
        raise ConfigError(
            f"{source}: key 'robot.model': {config.robot.model!r} is not one of "
            f"{sorted(ROBOT_MODELS)}"
        )
    robot = config.robot_model
    lim, wd, pol = config.limits, config.watchdog, config.policy
    for key in (
        "joint_min_rad",
        "joint_max_rad",
        "max_velocity_rad_s",
        "max_acceleration_rad_s2",
        "max_jerk_rad_s3",
    ):
        _check(
            len(getattr(lim, key)) == 6, f"limits.{key}", "needs 6 values, one per joint", source
        )
    _check(len(config.robot.initial_q_rad) == 6, "robot.initial_q_rad", "needs 6 values", source)
    for key in ("workspace_min_m", "workspace_max_m"):
        _check(len(getattr(lim, key)) == 3, f"limits.{key}", "needs 3 values [x, y, z]", source)
    for i in range(6):
        _check(
            lim.joint_min_rad[i] >= robot.joint_min_rad[i],
            "limits.joint_min_rad",
            f"joint {i}: {lim.joint_min_rad[i]:.4f} is below the {robot.name}'s own limit "
            f"{robot.joint_min_rad[i]:.4f}",
            source,
        )
        _check(
            lim.joint_max_rad[i] <= robot.joint_max_rad[i],
            "limits.joint_max_rad",
            f"joint {i}: {lim.joint_max_rad[i]:.4f} is above the {robot.name}'s own limit "
            f"{robot.joint_max_rad[i]:.4f}",
            source,
        )
        _check(
            lim.joint_max_rad[i] - lim.joint_min_rad[i] > 2 * lim.joint_margin_rad,
            "limits.joint_margin_rad",
            f"joint {i}: the margins leave no range",
            source,
        )
        _check(
            0 < lim.max_velocity_rad_s[i] <= robot.max_speed_rad_s[i],
            "limits.max_velocity_rad_s",
            f"joint {i}: {lim.max_velocity_rad_s[i]} must be in (0, {robot.max_speed_rad_s[i]:.4f}]"
            f" (the {robot.name}'s own limit)",
            source,
        )
        _check(
            lim.max_acceleration_rad_s2[i] > 0,
            "limits.max_acceleration_rad_s2",
            "must be > 0",
            source,
        )
        _check(lim.max_jerk_rad_s3[i] > 0, "limits.max_jerk_rad_s3", "must be > 0", source)
        _check(
            lim.joint_min_rad[i] + lim.joint_margin_rad
            <= config.robot.initial_q_rad[i]
            <= lim.joint_max_rad[i] - lim.joint_margin_rad,
            "robot.initial_q_rad",
            f"joint {i} starts outside the limits less their margin",
            source,
        )
    _check(lim.joint_margin_rad >= 0, "limits.joint_margin_rad", "must be >= 0", source)
    fastest = max(lim.max_velocity_rad_s) * robot.period_s
    _check(
        lim.max_step_rad >= fastest,
        "limits.max_step_rad",
        f"{lim.max_step_rad} rad is below max velocity × period ({fastest:.5f} rad): the two "
        "limits contradict each other",
        source,
    )
    for axis in range(3):
        _check(
            lim.workspace_min_m[axis] < lim.workspace_max_m[axis],
            "limits.workspace_min_m",
            f"axis {'xyz'[axis]}: min must be below max",
            source,
        )
    _check(
        0 <= lim.gripper_min < lim.gripper_max <= 1,
        "limits.gripper_min",
        "need 0 <= gripper_min < gripper_max <= 1",
        source,
    )
    _check(lim.max_gripper_speed_per_s > 0, "limits.max_gripper_speed_per_s", "must be > 0", source)
    _check(
        lim.gripper_min <= config.robot.initial_gripper <= lim.gripper_max,
        "robot.initial_gripper",
        "must lie in [gripper_min, gripper_max]",
        source,
    )
    _check(
        0 < wd.setpoint_hold_s < wd.setpoint_stop_s,
        "watchdog.setpoint_hold_s",
        "need 0 < setpoint_hold_s < setpoint_stop_s",
        source,
    )
    for key in (
        "camera_max_age_s",
        "mcu_heartbeat_timeout_s",
        "policy_heartbeat_timeout_s",
        "robot_watchdog_min_hz",
        "robot_state_max_age_s",
        "startup_timeout_s",
    ):
        _check(getattr(wd, key) > 0, f"watchdog.{key}", "must be > 0", source)
    _check(
        wd.mcu_heartbeat_timeout_s >= 2 * robot.period_s,
        "watchdog.mcu_heartbeat_timeout_s",
        "must cover at least two control periods",
        source,
    )
    _check(
        0 < pol.system2_rate_hz <= pol.system1_rate_hz,
        "policy.system2_rate_hz",
        "need 0 < system2_rate_hz <= system1_rate_hz",
        source,
    )
    _check(
        pol.system1_rate_hz <= 1 / robot.period_s,
        "policy.system1_rate_hz",
        "cannot exceed the robot's control rate",
        source,
    )
    _check(pol.crossfade_s >= 0, "policy.crossfade_s", "must be >= 0", source)
    _check(
        config.robot.kind in ("sim", "ur"),
        "robot.kind",
        f"{config.robot.kind!r}: 'sim' (the simulated UR5e) or 'ur' (ur_rtde at robot.host)",
        source,
    )
    _check_cameras(config.cameras, source)
    _check_mcu(config.mcu, source)
    _check(config.cameras.fps > 0, "cameras.fps", "must be > 0", source)
    return config


def _check_mcu(mcu: McuConfig, source: str) -> None:
    _check(
        mcu.kind in ("sim", "serial"),
        "mcu.kind",
        f"{mcu.kind!r}: 'sim' (simulated) or 'serial' (the edgevla firmware at mcu.port)",
        source,
    )
    if mcu.kind == "serial":
        _check(bool(mcu.port.strip()), "mcu.port", "a serial MCU needs its port", source)
    _check(mcu.baudrate > 0, "mcu.baudrate", "must be > 0", source)
    _check(mcu.heartbeat_hz >= 50, "mcu.heartbeat_hz", "the protocol asks for >= 50 Hz", source)
    _check(
        mcu.host_timeout_ms == 0 or 20 <= mcu.host_timeout_ms <= 1000,
        "mcu.host_timeout_ms",
        "0 (the MCU's default) or 20..1000 ms",
        source,
    )


def _check_cameras(cams: CamerasConfig, source: str) -> None:
    _check(
        cams.kind in ("sim", "realsense"),
        "cameras.kind",
        f"{cams.kind!r}: 'sim' (rendered) or 'realsense' (cameras.serials or cameras.recordings)",
        source,
    )
    _check(len(cams.names) >= 1, "cameras.names", "name at least one camera", source)
    _check(len(set(cams.names)) == len(cams.names), "cameras.names", "names repeat", source)
    if cams.kind != "realsense":
        return
    n = len(cams.names)
    _check(
        bool(cams.serials) != bool(cams.recordings),
        "cameras.serials",
        "give serials (live cameras) or recordings (.db3 files), not both and not neither",
        source,
    )
    sources = (
        ("serials", cams.serials),
        ("recordings", cams.recordings),
        ("calibrations", cams.calibrations),
    )
    for key, values in sources:
        _check(
            not values or len(values) == n,
            f"cameras.{key}",
            f"one per camera name: {n} names {list(cams.names)}, {len(values)} {key}",
            source,
        )
        _check(all(v.strip() for v in values), f"cameras.{key}", "an entry is empty", source)
    for key in ("width", "height"):
        _check(getattr(cams, key) > 0, f"cameras.{key}", "must be > 0", source)
    for key in ("stall_s", "reconnect_deadline_s"):
        _check(getattr(cams, key) > 0, f"cameras.{key}", "must be > 0", source)


def config_from_dict(data: dict[str, Any], source: str = "config") -> RuntimeConfig:
    try:
        config = msgspec.convert(data, RuntimeConfig)
    except msgspec.ValidationError as exc:
        raise _explain(exc, source) from exc
    return validate(config, source)


def load_config(path: Path | str | None) -> RuntimeConfig:
    """The embedded default without a path; otherwise the TOML file, fully checked."""
    if path is None:
        return validate(RuntimeConfig(), "embedded default")
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return config_from_dict(data, str(path))


def to_toml(config: RuntimeConfig) -> str:
    """The effective configuration as TOML (for `edgevla run --print-config`)."""
    lines: list[str] = []
    for section, value in msgspec.structs.asdict(config).items():
        lines.append(f"[{section}]")
        for key, item in msgspec.structs.asdict(value).items():
            lines.append(f"{key} = {_toml_value(item)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are valid TOML basic-string escapes
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    return repr(value)
