"""`edgevla bridge`: the safety-MCU link for field technicians.

    edgevla bridge monitor PORT      live view: link, firmware, e-stop, enable, counters
    edgevla bridge selftest PORT     handshake, heartbeat rate, enable, host-silence drop
    edgevla bridge firmware          the reference firmware on a pty of this host (dry runs)

Registered by `cli.build_parser`; pyserial is imported only inside these commands.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.live import Live
from rich.table import Table

from edgevla.console import out


def _status_text(status: int) -> str:
    from edgevla.firmware_bridge.protocol import Status

    names = [s.name.lower() for s in Status if status & s]
    return ", ".join(names) or "-"


def _view(link, started: float) -> Table:
    r, s = link.report, link.stats
    age = time.monotonic() - r.t_heartbeat_s
    table = Table(title=f"safety MCU on {link.port}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("link", "connected" if link.connected else f"DOWN ({link.last_error})")
    firmware = ".".join(map(str, r.firmware)) if r.firmware else "? (no HELLO_REPLY yet)"
    table.add_row("firmware", f"{firmware}, board {r.board}, protocol {r.protocol_version}")
    table.add_row("last heartbeat", f"{age * 1e3:.0f} ms ago" if age < 1e6 else "never")
    rate = s.heartbeats_rx / max(time.monotonic() - started, 1e-9)
    table.add_row("heartbeats", f"{s.heartbeats_rx} ({rate:.0f} Hz)")
    estop = (
        "PRESSED"
        if r.estop_pressed
        else ("latched (reset needed)" if r.estop_latched else "released")
    )
    table.add_row("e-stop", estop)
    table.add_row("enable output", "HIGH" if r.enable else "low")
    table.add_row("status bits", _status_text(r.status))
    table.add_row("gripper", f"{r.gripper_position} ‰ (target {r.gripper_target})")
    table.add_row("fault", f"{r.fault_code} (detail {r.fault_detail})" if r.fault_code else "none")
    table.add_row(
        "frames",
        f"rx {s.frames_rx}, bad {s.frames_bad}, lost {s.lost}, duplicated {s.duplicated}, "
        f"reordered {s.reordered}, tx {s.frames_tx}, reconnects {s.reconnects}",
    )
    return table


def cmd_bridge_monitor(args: argparse.Namespace) -> int:
    from edgevla.firmware_bridge.link import BridgeLink, LinkError

    link = BridgeLink(args.port, baudrate=args.baudrate)
    link.open()
    try:
        link.hello(2.0)
    except LinkError as exc:
        out.print(f"[yellow]warning:[/yellow] {exc}; showing what arrives")
    started = time.monotonic()
    end = started + args.duration if args.duration else float("inf")
    # Heartbeats keep the MCU's host deadline fed while watching; enable is never requested.
    with Live(_view(link, started), console=out, refresh_per_second=10) as live:
        while time.monotonic() < end:
            link.heartbeat(running=False)
            link.poll()
            live.update(_view(link, started))
            time.sleep(0.01)
    link.close()
    return 0


def cmd_bridge_selftest(args: argparse.Namespace) -> int:
    from edgevla.firmware_bridge.link import BridgeLink
    from edgevla.firmware_bridge.selftest import selftest

    link = BridgeLink(args.port, baudrate=args.baudrate)
    link.open()
    try:
        checks = selftest(link, host_timeout_ms=link.report.host_timeout_ms or 100)
    finally:
        link.close()
    for c in checks:
        mark = "[green]PASS[/green]" if c.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {c.name}: {c.detail}")
    passed = all(c.ok for c in checks) and len(checks) >= 5
    out.print("selftest passed" if passed else "selftest FAILED")
    return 0 if passed else 1


def cmd_bridge_firmware(args: argparse.Namespace) -> int:
    import tempfile

    from edgevla.firmware_bridge.build import build
    from edgevla.firmware_bridge.hostrun import HostFirmware

    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp))["edgevla-mcu-host"]
        link = Path(args.link) if args.link else None
        fw = HostFirmware(binary, link=link).start()
        assert fw.proc is not None
        out.print(
            f"reference firmware running on {fw.name} (pid {fw.proc.pid}); "
            f"e-stop: kill -USR1 {fw.proc.pid} (press), kill -USR2 {fw.proc.pid} (release)"
        )
        try:
            end = time.monotonic() + args.duration if args.duration else float("inf")
            shown = 0
            while time.monotonic() < end and fw.proc.poll() is None:
                for line in fw.lines[shown:]:
                    out.print(line)
                shown = len(fw.lines)
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        finally:
            out.print(fw.stop())
    return 0


def register(sub, add, group) -> None:
    """Add `bridge monitor|selftest|firmware` to the `edgevla` parser."""
    bridge = group("bridge", "the serial link to the safety MCU (docs/protocol.md)")
    p = add(
        "monitor",
        cmd_bridge_monitor,
        "live view of the MCU: e-stop, enable, heartbeats, frame counters (never requests enable)",
        bridge,
    )
    p.add_argument("port", metavar="PORT")
    p.add_argument("--baudrate", type=int, default=115200)
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p = add(
        "selftest",
        cmd_bridge_selftest,
        "check an MCU on the bench: handshake, heartbeat "
        "rate, e-stop, enable, and that host silence drops enable in time",
        bridge,
    )
    p.add_argument("port", metavar="PORT")
    p.add_argument("--baudrate", type=int, default=115200)
    p = add(
        "firmware",
        cmd_bridge_firmware,
        "run the reference firmware on a pty of this host, "
        'for dry runs with mcu.kind = "serial" (needs a C compiler)',
        bridge,
    )
    p.add_argument("--link", metavar="PATH", help="also name the pty PATH (a symbolic link)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
