"""Faults that `edgevla run --inject FAULT@T` can inject, and where each one acts."""

from __future__ import annotations

from enum import IntEnum


class Fault(IntEnum):
    NONE = 0
    POLICY_HANG = 1  # policy process: every thread blocks
    POLICY_CRASH = 2  # policy process: exits at once
    NAN_PLAN = 3  # System 2 returns NaN actions
    WILD_PLAN = 4  # System 2 returns actions far outside the joint limits
    CAMERA_STALL = 5  # cameras stop delivering frames
    ROBOT_PSTOP = 6  # the robot enters a protective stop
    ROBOT_DISCONNECT = 7  # the robot connection drops
    ESTOP = 8  # the e-stop on the safety MCU is pressed
    MCU_SILENT = 9  # the safety MCU stops sending heartbeats

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> Fault:
        for fault in cls:
            if fault is not cls.NONE and fault.label == text:
                return fault
        names = ", ".join(f.label for f in cls if f is not cls.NONE)
        raise ValueError(f"unknown fault {text!r}; choose from {names}")


POLICY_SIDE = {
    Fault.POLICY_HANG,
    Fault.POLICY_CRASH,
    Fault.NAN_PLAN,
    Fault.WILD_PLAN,
    Fault.CAMERA_STALL,
}
