"""`edgevla service safe-stop`: what systemd runs after every exit of the service
(ExecStopPost=), a clean stop, a crash or a watchdog kill alike.

It stops the arm through the robot controller, says what it did, and never fails: an
unreachable robot or an unreadable config is reported, and the command still exits 0 so that a
restart is never held up. It is the last of several stops, not the only one: the control
process brings the arm to rest on a requested stop and when the supervisor dies, the robot-side
watchdog stops it when servo commands cease, and the safety MCU drops its enable line when the
host goes silent (docs/safety.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edgevla.runtime.errors import EdgeVlaError


def how_it_ended(env: Mapping[str, str]) -> str | None:
    """systemd's account of the exit (set for ExecStopPost=), in one line."""
    result = env.get("SERVICE_RESULT")
    if result is None:
        return None
    code, status = env.get("EXIT_CODE", "?"), env.get("EXIT_STATUS", "?")
    return f"the service ended: result {result}, {code} {status}"


def safe_stop(config_path: str | None, env: Mapping[str, str] | None = None) -> list[str]:
    """Stop the robot the config names; the lines say what happened. Never raises."""
    from edgevla.runtime.config import load_config

    env = os.environ if env is None else env
    lines = [line] if (line := how_it_ended(env)) else []
    try:
        config = load_config(Path(config_path) if config_path else None)
    except EdgeVlaError as exc:
        return [
            *lines,
            f"cannot read the config ({exc}); nothing stopped here: the robot-side watchdog "
            "and the safety MCU stop the arm without edgevla",
        ]
    if config.robot.kind == "ur":
        from edgevla.robots.ur.dashboard import DashboardError, stop_program

        try:
            lines.append(stop_program(config.robot.host))
        except (OSError, DashboardError) as exc:
            lines.append(
                f"could not stop the UR controller at {config.robot.host} ({exc}); its "
                "robot-side watchdog stops the arm once servo commands cease"
            )
    else:
        lines.append("simulated robot: nothing to stop (it lived in the service's own processes)")
    if config.mcu.kind == "serial":
        # Not opened here: the MCU drops enable by itself after host silence, and a port we
        # opened would only delay the next start's exclusive open.
        lines.append("safety MCU: drops its enable line by itself once host heartbeats stop")
    return lines
