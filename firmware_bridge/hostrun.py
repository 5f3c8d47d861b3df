"""The reference firmware as a process on this host, at the far end of a pty.

For tests, dry runs and bench work without a board: the firmware's own code (the portable core
plus `board_host.c`) talks to the host side through a real tty, as a USB-serial MCU would. The
e-stop input is a signal to the process; the enable output is a line on its stderr. `link`
names a symbolic link to the pty (like /dev/serial/by-id/...), so a restarted firmware can
reappear under the same name after its port disappeared.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import tty
from pathlib import Path

from edgevla.runtime.errors import EdgeVlaError


class HostFirmware:
    def __init__(self, binary: Path, *, link: Path | None = None, board: int = 0) -> None:
        self.binary = Path(binary)
        self.link = link
        self.board = board
        self.port = ""
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []  # stderr: "ready ...", "enable 0|1 at N ms", "stopped: ..."
        self._reader: threading.Thread | None = None

    def start(self) -> HostFirmware:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, before anyone opens the other end
        self.port = os.ttyname(slave)
        self.proc = subprocess.Popen(
            [str(self.binary), "--fd", str(master), "--board", str(self.board)],
            pass_fds=(master,),
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        os.close(master)
        os.close(slave)
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline()
        if not first.startswith("ready"):
            raise EdgeVlaError(f"the host firmware did not start: {first!r}")
        self.lines.append(first.strip())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.port)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.strip())

    @property
    def name(self) -> str:
        """What a host should open: the link if there is one, else the pty itself."""
        return str(self.link) if self.link is not None else self.port

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def press_estop(self) -> None:
        self._signal(signal.SIGUSR1)

    def release_estop(self) -> None:
        self._signal(signal.SIGUSR2)

    def freeze(self) -> None:
        """The MCU stops (SIGSTOP): no heartbeats, no answers."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, *, unlink: bool = True) -> str:
        """Stop the firmware (its pty goes with it); returns its last stderr line."""
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        if unlink and self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        return self.lines[-1] if self.lines else ""

    def __enter__(self) -> HostFirmware:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
