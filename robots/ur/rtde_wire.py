"""The RTDE wire format as ur_rtde speaks it (UR's RTDE guide; docs/dev/ur-rtde-emulator-notes.md).

Every message is a big-endian header (total size including the header, message type) and a
payload. Data packages carry a recipe id and the recipe's fields, each packed by the variable's
type. The client decodes by its own type table, so the emulator must pack every field with the
type ur_rtde expects for that name: this module is that table.
"""

from __future__ import annotations

import re
import socket
import struct
from enum import IntEnum

HEADER = struct.Struct(">HB")
PROTOCOL_VERSION = 2


class Msg(IntEnum):
    PROTOCOL_VERSION = 86  # V
    CONTROLLER_VERSION = 118  # v
    TEXT = 77  # M
    DATA = 85  # U
    SETUP_OUTPUTS = 79  # O
    SETUP_INPUTS = 73  # I
    START = 83  # S
    PAUSE = 80  # P


# Struct formats of the RTDE types (big-endian, no padding).
FORMATS = {
    "DOUBLE": "d",
    "VECTOR3D": "3d",
    "VECTOR6D": "6d",
    "INT32": "i",
    "UINT32": "I",
    "UINT64": "Q",
    "VECTOR6INT32": "6i",
}

_VECTOR6D = [
    "target_q",
    "target_qd",
    "target_qdd",
    "target_current",
    "target_moment",
    "actual_q",
    "actual_qd",
    "actual_current",
    "joint_control_output",
    "actual_TCP_pose",
    "actual_TCP_speed",
    "actual_TCP_force",
    "target_TCP_pose",
    "target_TCP_speed",
    "joint_temperatures",
    "actual_joint_voltage",
    "ft_raw_wrench",
    "payload_inertia",
    "actual_current_as_torque",
    "external_force_torque",
]
_DOUBLE = [
    "timestamp",
    "actual_execution_time",
    "speed_scaling",
    "target_speed_fraction",
    "actual_momentum",
    "actual_main_voltage",
    "actual_robot_voltage",
    "actual_robot_current",
    "standard_analog_input0",
    "standard_analog_input1",
    "standard_analog_output0",
    "standard_analog_output1",
    "payload",
]
_TYPES = {
    **dict.fromkeys(_VECTOR6D, "VECTOR6D"),
    **dict.fromkeys(_DOUBLE, "DOUBLE"),
    "actual_tool_accelerometer": "VECTOR3D",
    "payload_cog": "VECTOR3D",
    "robot_mode": "INT32",
    "safety_mode": "INT32",
    "runtime_state": "UINT32",
    "robot_status_bits": "UINT32",
    "safety_status_bits": "UINT32",
    "actual_digital_input_bits": "UINT64",
    "actual_digital_output_bits": "UINT64",
    "joint_mode": "VECTOR6INT32",
}
_REGISTER = re.compile(r"(input|output)_(int|double)_register_(\d+)$")


def variable_type(name: str) -> str | None:
    """The RTDE type ur_rtde decodes `name` with, or None for a name this table lacks."""
    if name in _TYPES:
        return _TYPES[name]
    m = _REGISTER.match(name)
    if m and int(m.group(3)) < 48:
        return "INT32" if m.group(2) == "int" else "DOUBLE"
    return None


def recipe_struct(types: list[str]) -> struct.Struct:
    return struct.Struct(">" + "".join(FORMATS[t] for t in types))


def message(kind: Msg, payload: bytes = b"") -> bytes:
    return HEADER.pack(HEADER.size + len(payload), int(kind)) + payload


def read_exact(sock: socket.socket, count: int) -> bytes:
    """`count` bytes, or ConnectionError when the peer closes first."""
    chunks = []
    while count:
        chunk = sock.recv(count)
        if not chunk:
            raise ConnectionError("peer closed the connection")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_message(sock: socket.socket) -> tuple[int, bytes]:
    size, kind = HEADER.unpack(read_exact(sock, HEADER.size))
    if size < HEADER.size:
        raise ConnectionError(f"RTDE header with size {size} < {HEADER.size}")
    return kind, read_exact(sock, size - HEADER.size)
