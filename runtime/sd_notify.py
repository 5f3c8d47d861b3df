"""sd_notify by hand: datagrams to `$NOTIFY_SOCKET`, as systemd's `Type=notify` expects.

The protocol is newline-separated `KEY=VALUE` lines in one datagram to a Unix socket whose path
systemd puts in `$NOTIFY_SOCKET` (a leading `@` means the abstract namespace). No library is
needed for that, and none is added. Outside systemd the variable is unset and every call here
does nothing, so `edgevla run` behaves the same from a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("edgevla.sd_notify")


class Notifier:
    """One service's channel to systemd: READY, STATUS, WATCHDOG and STOPPING messages."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # Abstract sockets are written with '@' in the variable and a NUL on the wire.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval_s = _watchdog_interval(env) if self.address else None
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        """Send one message (`send(READY=1, STATUS="...")`); True if systemd got it. Never
        raises: a supervisor must not stop its robot because the service manager went away."""
        if not self.address:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:
            if not self._failed:  # once: the loop calls this every few hundred ms
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
                self._failed = True
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of `WATCHDOG_USEC` (systemd's advice), if the watchdog is meant for this process."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # not configured, or inherited by a process systemd does not watch
    return usec / 2e6
