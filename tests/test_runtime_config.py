"""The runtime configuration: the embedded default, TOML round trips, and rejections that name
the key at fault (units are part of key names; limits may tighten the robot's, never loosen)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edgevla.runtime.config import (
    RuntimeConfig,
    config_from_dict,
    load_config,
    to_toml,
    validate,
)
from edgevla.runtime.errors import ConfigError
from edgevla.runtime.kinematics import ROBOT_MODELS

TAU = 2 * math.pi


def write(tmp_path: Path, text: str | bytes, name: str = "edgevla.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def replace(config: RuntimeConfig, section: str, **changes: Any) -> RuntimeConfig:
    return msgspec.structs.replace(
        config, **{section: msgspec.structs.replace(getattr(config, section), **changes)}
    )


# ---------------------------------------------------------------- the default and round trips


def test_embedded_default_validates() -> None:
    config = load_config(None)
    assert config == RuntimeConfig()
    assert validate(RuntimeConfig()) == config
    assert config_from_dict({}) == config  # every key has a default
    assert config.robot_model is ROBOT_MODELS[config.robot.model]


def _variant() -> RuntimeConfig:
    """Every section changed, including awkward strings and exact floats."""
    c = RuntimeConfig()
    c = replace(c, "robot", model="ur5", host="10.0.0.7", realtime_priority=50)
    c = replace(
        c,
        "limits",
        max_step_rad=0.03,  # π rad/s at the UR5's 125 Hz period: 25 mrad per cycle
        joint_margin_rad=0.1 + 0.2,  # 0.30000000000000004: must survive exactly
        max_velocity_rad_s=(math.pi, 1.0, 0.5, 1e-3, 2.0, 1.5),
        max_jerk_rad_s3=(1e4, 200.0, 200.0, 5e2, 1.5e-7 * 1e9, 200.0),
        workspace_min_m=(-0.5, -0.5, 1e-300),
    )
    c = replace(
        c,
        "policy",
        instruction='put the "red" cube on the\\blue one — vite, s\'il vous plaît\t(tab)',
        system1_enabled=False,
        seed=-3,
    )
    c = replace(
        c,
        "cameras",
        kind="realsense",
        names=("wrist",),
        fps=15.5,
        serials=("123622270081",),
        depth=True,
        stall_s=0.25,
    )
    c = replace(c, "watchdog", setpoint_hold_s=0.05, setpoint_stop_s=0.2)
    return validate(c)


@pytest.mark.parametrize("config", [RuntimeConfig(), _variant()], ids=["default", "variant"])
def test_to_toml_round_trips_through_a_file(tmp_path: Path, config: RuntimeConfig) -> None:
    path = write(tmp_path, to_toml(config))
    assert load_config(path) == config
    assert to_toml(load_config(path)) == to_toml(config)


@pytest.mark.parametrize("text", ["pick\nplace", "bell\x07", "nul\x00"], ids=["lf", "bel", "nul"])
def test_to_toml_round_trips_control_characters(tmp_path: Path, text: str) -> None:
    config = replace(RuntimeConfig(), "policy", instruction=text)
    assert load_config(write(tmp_path, to_toml(config))) == config


def test_integers_are_accepted_for_float_keys(tmp_path: Path) -> None:
    """Hand-written TOML says `max_velocity_rad_s = [1, 1, 1, 1, 1, 1]`."""
    path = write(tmp_path, "[limits]\nmax_velocity_rad_s = [1, 1, 1, 1, 1, 1]\nmax_step_rad = 1\n")
    limits = load_config(path).limits
    assert limits.max_velocity_rad_s == (1.0,) * 6 and limits.max_step_rad == 1.0


# ---------------------------------------------------------------- rejections name the key

SIX = [0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0]
REJECTIONS: list[Any] = [
    # unknown keys, with the nearest known key and the units hint
    pytest.param(
        {"limits": {"max_velocity_deg_s": [57.3] * 6}},
        "limits.max_velocity_deg_s",
        ["unknown key", "did you mean 'limits.max_velocity_rad_s'", "units are part of key names"],
        id="unknown-deg_s",
    ),
    pytest.param(
        {"watchdog": {"setpoint_stop_ms": 300}},
        "watchdog.setpoint_stop_ms",
        ["did you mean 'watchdog.setpoint_stop_s'", "units are part of key names"],
        id="unknown-ms",
    ),
    pytest.param(
        {"limit": {}}, "limit", ["unknown key", "did you mean 'limits'"], id="unknown-section"
    ),
    pytest.param({"speed": 3}, "speed", ["unknown key"], id="unknown-top-level"),
    # wrong types
    pytest.param(
        {"limits": {"joint_margin_rad": "0.1"}},
        "limits.joint_margin_rad",
        ["Expected `float`, got `str`"],
        id="type-str-for-float",
    ),
    pytest.param(
        {"limits": {"max_velocity_rad_s": [1, 1, "fast", 1, 1, 1]}},
        "limits.max_velocity_rad_s[2]",
        ["Expected `float`"],
        id="type-list-element",
    ),
    pytest.param(
        {"robot": {"realtime_priority": 80.5}},
        "robot.realtime_priority",
        ["Expected `int`"],
        id="type-float-for-int",
    ),
    pytest.param({"policy": {"seed": True}}, "policy.seed", ["Expected `int`"], id="type-bool"),
    pytest.param(
        {"policy": {"system1_enabled": 1}},
        "policy.system1_enabled",
        ["Expected `bool`"],
        id="type-int-for-bool",
    ),
    pytest.param({"limits": 5}, "limits", ["Expected `object`"], id="type-section"),
    pytest.param(
        {"limits": {"joint_min_rad": -6.0}},
        "limits.joint_min_rad",
        ["Expected `array`"],
        id="type-scalar-for-list",
    ),
    # lengths
    *[
        pytest.param(
            {"limits": {key: [1.0] * n}}, f"limits.{key}", ["needs 6 values"], id=f"len-{key}-{n}"
        )
        for key in (
            "joint_min_rad",
            "joint_max_rad",
            "max_velocity_rad_s",
            "max_acceleration_rad_s2",
            "max_jerk_rad_s3",
        )
        for n in (5, 7)
    ],
    pytest.param(
        {"robot": {"initial_q_rad": SIX[:5]}},
        "robot.initial_q_rad",
        ["needs 6 values"],
        id="len-initial_q",
    ),
    pytest.param(
        {"limits": {"workspace_min_m": [0.0, 0.0]}},
        "limits.workspace_min_m",
        ["needs 3 values"],
        id="len-workspace_min",
    ),
    pytest.param(
        {"limits": {"workspace_max_m": [1.0, 1.0, 1.0, 1.0]}},
        "limits.workspace_max_m",
        ["needs 3 values"],
        id="len-workspace_max",
    ),
    # limits that loosen the robot's own
    pytest.param(
        {"limits": {"joint_min_rad": [-TAU - 0.01, -TAU, -math.pi, -TAU, -TAU, -TAU]}},
        "limits.joint_min_rad",
        ["joint 0", "below the ur5e's own limit"],
        id="joint-below-2pi",
    ),
    pytest.param(
        {"limits": {"joint_max_rad": [TAU, TAU, math.pi + 1e-9, TAU, TAU, TAU]}},
        "limits.joint_max_rad",
        ["joint 2", "above the ur5e's own limit"],  # the elbow's is ±π
        id="elbow-beyond-pi",
    ),
    pytest.param(
        {"limits": {"joint_max_rad": [TAU, TAU, math.pi, TAU, TAU, TAU + 1e-9]}},
        "limits.joint_max_rad",
        ["joint 5", "above the ur5e's own limit"],
        id="wrist-beyond-2pi",
    ),
    pytest.param(
        {"limits": {"max_velocity_rad_s": [1.0, 1.0, 1.0, math.pi + 1e-9, 1.0, 1.0]}},
        "limits.max_velocity_rad_s",
        ["joint 3", "(the ur5e's own limit)"],
        id="velocity-above-pi",
    ),
    pytest.param(
        {"limits": {"max_velocity_rad_s": [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]}},
        "limits.max_velocity_rad_s",
        ["joint 1"],
        id="velocity-zero",
    ),
    pytest.param(
        {"limits": {"max_acceleration_rad_s2": [4.0] * 5 + [-4.0]}},
        "limits.max_acceleration_rad_s2",
        ["must be > 0"],
        id="acceleration-negative",
    ),
    pytest.param(
        {"limits": {"max_jerk_rad_s3": [0.0] * 6}},
        "limits.max_jerk_rad_s3",
        ["must be > 0"],
        id="jerk-zero",
    ),
    pytest.param(
        {"limits": {"max_velocity_rad_s": [math.nan] * 6}},
        "limits.max_velocity_rad_s",
        ["joint 0"],
        id="velocity-nan",
    ),
    # max step against velocity × period
    pytest.param(
        {"limits": {"max_step_rad": 0.0019}},
        "limits.max_step_rad",
        ["below max velocity × period", "0.00200"],
        id="max-step-below-v-dt",
    ),
    pytest.param(
        {"limits": {"max_velocity_rad_s": [math.pi] * 6}},  # π·2 ms = 6.3 mrad > 4 mrad
        "limits.max_step_rad",
        ["contradict"],
        id="max-step-below-fast-v-dt",
    ),
    pytest.param(
        {"robot": {"model": "ur5"}},  # 125 Hz: 1 rad/s·8 ms = 8 mrad > 4 mrad
        "limits.max_step_rad",
        ["0.00800"],
        id="max-step-below-v-dt-ur5",
    ),
    # margins
    pytest.param(
        {"limits": {"joint_margin_rad": math.pi}},  # the elbow's range is 2π
        "limits.joint_margin_rad",
        ["joint 2", "leave no range"],
        id="margin-no-range",
    ),
    pytest.param(
        {
            "limits": {
                "joint_min_rad": [-0.05, -TAU, -math.pi, -TAU, -TAU, -TAU],
                "joint_max_rad": [0.05, TAU, math.pi, TAU, TAU, TAU],
            }
        },
        "limits.joint_margin_rad",
        ["joint 0", "leave no range"],
        id="margin-no-range-tight-joint",
    ),
    pytest.param(
        {"limits": {"joint_margin_rad": -0.01}},
        "limits.joint_margin_rad",
        [">= 0"],
        id="margin-negative",
    ),
    # watchdog
    pytest.param(
        {"watchdog": {"setpoint_hold_s": 0.3, "setpoint_stop_s": 0.3}},
        "watchdog.setpoint_hold_s",
        ["setpoint_hold_s < setpoint_stop_s"],
        id="hold-equals-stop",
    ),
    pytest.param(
        {"watchdog": {"setpoint_hold_s": 0.5, "setpoint_stop_s": 0.3}},
        "watchdog.setpoint_hold_s",
        ["setpoint_hold_s < setpoint_stop_s"],
        id="hold-after-stop",
    ),
    pytest.param(
        {"watchdog": {"setpoint_hold_s": 0.0}},
        "watchdog.setpoint_hold_s",
        ["0 < setpoint_hold_s"],
        id="hold-zero",
    ),
    pytest.param(
        {"watchdog": {"mcu_heartbeat_timeout_s": 0.003}},  # less than two 2 ms periods
        "watchdog.mcu_heartbeat_timeout_s",
        ["two control periods"],
        id="mcu-heartbeat-below-two-periods",
    ),
    pytest.param(
        {"watchdog": {"camera_max_age_s": 0.0}},
        "watchdog.camera_max_age_s",
        ["must be > 0"],
        id="camera-age-zero",
    ),
    # initial pose
    pytest.param(
        {"robot": {"initial_q_rad": [0.0, -1.57, 3.1, -1.57, -1.57, 0.0]}},
        "robot.initial_q_rad",
        ["joint 2", "outside the limits less their margin"],  # inside ±π, inside the band
        id="initial-in-margin-band",
    ),
    pytest.param(
        {"robot": {"initial_q_rad": [7.0, -1.57, 1.57, -1.57, -1.57, 0.0]}},
        "robot.initial_q_rad",
        ["joint 0"],
        id="initial-beyond-limits",
    ),
    # robot model and device kinds
    pytest.param(
        {"robot": {"model": "ur10e"}},
        "robot.model",
        ["'ur10e' is not one of", "'ur5'", "'ur5e'"],
        id="unknown-model",
    ),
    pytest.param(
        {"robot": {"kind": "kuka"}}, "robot.kind", ["'sim'", "'ur'"], id="robot-kind-unknown"
    ),
    pytest.param(
        {"cameras": {"kind": "usb"}}, "cameras.kind", ["'sim'", "'realsense'"], id="cameras-kind"
    ),
    pytest.param(
        {"cameras": {"kind": "realsense"}},
        "cameras.serials",
        ["give serials (live cameras) or recordings"],
        id="realsense-without-a-source",
    ),
    pytest.param(
        {"cameras": {"kind": "realsense", "serials": ["1"], "recordings": ["a.db3", "b.db3"]}},
        "cameras.serials",
        ["not both"],
        id="realsense-both-sources",
    ),
    pytest.param(
        {"cameras": {"kind": "realsense", "serials": ["123622270081"]}},
        "cameras.serials",
        ["one per camera name: 2 names ['scene', 'wrist'], 1 serials"],
        id="realsense-serial-count",
    ),
    pytest.param(
        {"cameras": {"kind": "realsense", "recordings": ["a.db3", " "]}},
        "cameras.recordings",
        ["an entry is empty"],
        id="realsense-empty-recording",
    ),
    pytest.param(
        {"cameras": {"names": ["scene", "scene"]}}, "cameras.names", ["repeat"], id="names-repeat"
    ),
    pytest.param({"cameras": {"names": []}}, "cameras.names", ["at least one"], id="no-cameras"),
    pytest.param(
        {"cameras": {"kind": "realsense", "serials": ["1", "2"], "stall_s": 0.0}},
        "cameras.stall_s",
        ["must be > 0"],
        id="stall-zero",
    ),
    pytest.param({"mcu": {"kind": "can"}}, "mcu.kind", ["'sim'", "'serial'"], id="mcu-kind"),
    pytest.param(
        {"mcu": {"kind": "serial"}}, "mcu.port", ["needs its port"], id="mcu-serial-no-port"
    ),
    pytest.param(
        {"mcu": {"heartbeat_hz": 20.0}}, "mcu.heartbeat_hz", [">= 50 Hz"], id="mcu-slow-heartbeat"
    ),
    pytest.param(
        {"mcu": {"host_timeout_ms": 5}}, "mcu.host_timeout_ms", ["20..1000"], id="mcu-timeout"
    ),
    # the rest of the ranges
    pytest.param(
        {"limits": {"workspace_min_m": [-0.9, 0.5, 0.02], "workspace_max_m": [0.9, 0.5, 1.1]}},
        "limits.workspace_min_m",
        ["axis y"],
        id="workspace-empty",
    ),
    pytest.param(
        {"limits": {"gripper_min": 0.6, "gripper_max": 0.4}},
        "limits.gripper_min",
        ["gripper_min < gripper_max"],
        id="gripper-range-inverted",
    ),
    pytest.param(
        {"limits": {"gripper_max": 1.5}},
        "limits.gripper_min",
        ["gripper_max <= 1"],
        id="gripper-max-above-1",
    ),
    pytest.param(
        {"limits": {"max_gripper_speed_per_s": 0.0}},
        "limits.max_gripper_speed_per_s",
        ["must be > 0"],
        id="gripper-speed-zero",
    ),
    pytest.param(
        {"policy": {"system2_rate_hz": 60.0}},
        "policy.system2_rate_hz",
        ["system2_rate_hz <= system1_rate_hz"],
        id="system2-faster-than-system1",
    ),
    pytest.param(
        {"policy": {"system1_rate_hz": 600.0}},
        "policy.system1_rate_hz",
        ["control rate"],
        id="system1-faster-than-control",
    ),
    pytest.param(
        {"policy": {"crossfade_s": -0.1}}, "policy.crossfade_s", [">= 0"], id="crossfade-negative"
    ),
    pytest.param({"cameras": {"fps": 0.0}}, "cameras.fps", ["must be > 0"], id="fps-zero"),
]


@pytest.mark.parametrize(("data", "key", "fragments"), REJECTIONS)
def test_rejection_names_the_key(data: dict[str, Any], key: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="site.toml")
    message = str(info.value)
    assert message.startswith("site.toml: ")
    assert f"'{key}'" in message
    for fragment in fragments:
        assert fragment in message


def _toml(data: dict[str, Any]) -> str:
    """Just enough TOML for the rejection tables (sections of scalars and lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, float) and math.isnan(v):
            return "nan"
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("data", "key", "fragments"), REJECTIONS)
def test_rejection_from_a_file_names_the_file_and_key(
    tmp_path: Path, data: dict[str, Any], key: str, fragments: list[str]
) -> None:
    path = write(tmp_path, _toml(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert f"'{key}'" in message


@pytest.mark.parametrize(
    "text",
    [
        "[limits\n",
        "[limits]\nmax_step_rad = \n",
        "[limits]\nmax_step_rad = 0.004\nmax_step_rad = 0.005\n",  # a duplicate key
        "[policy]\ninstruction = 'unterminated\n",
        "max_step_rad 0.004\n",
    ],
    ids=["section", "value", "duplicate", "string", "equals"],
)
def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "edgevla.toml"
    with pytest.raises(ConfigError, match="no such config file") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("what", ["directory", "not-utf8"])
def test_unreadable_config_is_a_config_error(tmp_path: Path, what: str) -> None:
    if what == "directory":
        path = tmp_path
    else:
        path = write(tmp_path, b'[policy]\ninstruction = "caf\xe9"\n')  # Latin-1 é
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- values validation lets through

_NON_FINITE = [
    # (section, key, value, why it matters if accepted)
    ("limits", "joint_min_rad", [-math.inf] * 6, ""),
    ("limits", "joint_max_rad", [math.inf] * 6, ""),
    ("limits", "joint_margin_rad", math.inf, ""),
    ("limits", "max_velocity_rad_s", [math.inf] * 6, ""),
    ("limits", "max_acceleration_rad_s2", [math.inf] * 6, "the filter then commands NaN"),
    ("limits", "max_jerk_rad_s3", [math.inf] * 6, "the filter then commands NaN"),
    ("limits", "max_step_rad", math.inf, "disables the max-step defence"),
    ("limits", "workspace_min_m", [-math.inf] * 3, "disables the TCP box"),
    ("limits", "workspace_max_m", [math.inf] * 3, "disables the TCP box"),
    ("limits", "gripper_min", -math.inf, ""),
    ("limits", "gripper_max", math.inf, ""),
    ("limits", "max_gripper_speed_per_s", math.inf, "disables the gripper rate limit"),
    ("watchdog", "setpoint_hold_s", math.inf, ""),
    ("watchdog", "setpoint_stop_s", math.inf, "disables the stale-setpoint trip"),
    ("watchdog", "camera_max_age_s", math.inf, "disables the camera-staleness trip"),
    ("watchdog", "mcu_heartbeat_timeout_s", math.inf, "disables the MCU heartbeat trip"),
    ("watchdog", "policy_heartbeat_timeout_s", math.inf, "disables the policy-dead trip"),
    ("watchdog", "robot_watchdog_min_hz", math.inf, "an impossible robot-side watchdog"),
    ("watchdog", "startup_timeout_s", math.inf, "disables the startup timeout"),
    ("robot", "initial_q_rad", [math.inf] * 6, ""),
    ("robot", "initial_gripper", math.nan, "unchecked: NaN reaches the sim and the filter"),
    ("cameras", "fps", math.inf, "meaningless"),
    ("policy", "system2_rate_hz", math.inf, ""),
    ("policy", "system1_rate_hz", math.inf, ""),
    ("policy", "crossfade_s", math.inf, "meaningless"),
]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [pytest.param(s, k, v, id=f"{s}.{k}") for s, k, v, _why in _NON_FINITE],
)
def test_non_finite_values_are_rejected(section: str, key: str, value: Any) -> None:
    """inf/nan are valid TOML; no key of this config has a meaning for them. Rejections of a
    pair (hold < stop, min < max, rates) may name the partner key."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({section: {key: value}})
    assert f"'{section}." in str(info.value)


@pytest.mark.parametrize("gripper", [-0.5, 5.0])
def test_initial_gripper_outside_its_range_is_rejected(gripper: float) -> None:
    with pytest.raises(ConfigError, match=r"robot\.initial_gripper"):
        config_from_dict({"robot": {"initial_gripper": gripper}})
