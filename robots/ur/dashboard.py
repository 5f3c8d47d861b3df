"""The last-resort stop of a UR arm: the dashboard server's `stop` (port 29999).

Used after edgevla has ended, however it ended (`edgevla service safe-stop`, systemd's
ExecStopPost=). Not ur_rtde's `servoStop`/`stopScript`: those go through an
`RTDEControlInterface`, whose constructor first uploads and starts a control script of its own,
so stopping that way begins by starting a program. The dashboard stops whatever program runs
(ours, left behind by a crash) without uploading anything.

Spoken over a plain socket rather than ur_rtde's `DashboardClient`: every step is bounded by
the socket timeout (ur_rtde's calls hold the GIL while they wait), and it works where ur_rtde
is not installed. The protocol is one text line each way.
"""

from __future__ import annotations

import socket

DASHBOARD_PORT = 29999


class DashboardError(RuntimeError):
    """The controller answered, but not with what the command asked for."""


def _ask(stream, command: str) -> str:
    stream.write(command.encode() + b"\n")
    reply = stream.readline().decode(errors="replace").strip()
    if not reply:
        raise DashboardError(f"no answer to {command!r}")
    return reply


def stop_program(host: str, timeout_s: float = 2.0, port: int = DASHBOARD_PORT) -> str:
    """Stop the program running on the controller at `host`; say what happened.

    Raises OSError (unreachable, no answer within `timeout_s` per step) and DashboardError (the
    controller refused, e.g. in local mode); the caller decides what that means.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        stream = sock.makefile("rwb", buffering=0)
        stream.readline()  # the banner: "Connected: Universal Robots Dashboard Server"
        if _ask(stream, "running").lower().endswith("false"):
            return f"no program running on the UR controller at {host}: the arm is stopped"
        reply = _ask(stream, "stop")
        if not reply.startswith("Stopped"):
            raise DashboardError(f"the UR controller at {host} refused the stop: {reply!r}")
        return f"stopped the program on the UR controller at {host}"
