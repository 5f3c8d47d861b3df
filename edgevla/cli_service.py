"""`edgevla service`: edgevla as a systemd service (docs/deploy.md).

    edgevla service install [--root DIR]    unit, environment file, config, user, udev rules
    edgevla service verify [--root DIR]     systemd-analyze, config, bundle and calibration
    edgevla service safe-stop               stop the robot after the service ended (ExecStopPost)

Registered by `cli.build_parser`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.markup import escape

from edgevla.console import err, out


def cmd_service_install(args: argparse.Namespace) -> int:
    from edgevla.systemd.install import InstallOptions, install

    gpu = () if args.no_gpu else (tuple(args.gpu_device) if args.gpu_device else None)
    options = InstallOptions(
        root=Path(args.root),
        config=Path(args.config) if args.config else None,
        executable=Path(args.executable) if args.executable else None,
        mcu_serial=args.mcu_serial,
        robot_network=args.robot_network,
        gpu_devices=gpu,
    )
    done = install(options)
    shown = "" if options.root == Path("/") else f" under {options.root}"
    for path in done.written:
        out.print(f"wrote {path}{shown}")
    for path in done.kept:
        out.print(f"kept {path}{shown} (yours: remove it to get the default again)")
    for note in done.notes:
        err.print(f"[yellow]note[/yellow] {escape(note)}")
    if options.root == Path("/"):
        out.print(
            "next: systemd-sysusers; udevadm control --reload && udevadm trigger; "
            "systemctl daemon-reload; edgevla service verify; systemctl enable --now edgevla"
        )
    return 0


def cmd_service_verify(args: argparse.Namespace) -> int:
    from edgevla.systemd.verify import verify

    checks = verify(Path(args.root))
    for check in checks:
        mark = {True: "[green]OK[/green]  ", False: "[red]FAIL[/red]", None: "note"}[check.ok]
        out.print(f"{mark} {escape(check.name)}: {escape(check.detail)}")
    return 1 if any(check.ok is False for check in checks) else 0


def cmd_service_safe_stop(args: argparse.Namespace) -> int:
    from edgevla.systemd.safe_stop import safe_stop

    config = args.config or os.environ.get("EDGEVLA_CONFIG") or None
    try:
        lines = safe_stop(config)
    except Exception as exc:  # never hold up a restart: say it, and exit 0 regardless
        lines = [f"safe-stop failed: {exc!r}"]
    for line in lines:
        out.print(f"safe-stop: {escape(line)}")
    return 0


def register(sub, add, group) -> None:
    service = group("service", "edgevla as a systemd service (docs/deploy.md)")
    p = add(
        "install",
        cmd_service_install,
        "write the unit, its environment file, the runtime config (kept if present), the "
        "system user (sysusers.d) and the udev rules",
        service,
    )
    p.add_argument("--root", default="/", metavar="DIR", help="install under DIR (an image)")
    p.add_argument("--config", metavar="PATH", help="runtime TOML to install as the service's")
    p.add_argument(
        "--executable", metavar="PATH", help="the edgevla command (default: this installation's)"
    )
    p.add_argument(
        "--mcu-serial",
        metavar="SN",
        help="the safety MCU's USB serial number: udev names its port /dev/edgevla-mcu",
    )
    p.add_argument(
        "--robot-network",
        metavar="CIDR",
        help="what the unit lets through besides loopback (default: robot.host of the config)",
    )
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument(
        "--gpu-device",
        action="append",
        metavar="PATH",
        help="a GPU device node to allow (repeatable; default: the NVIDIA nodes found here)",
    )
    gpu.add_argument("--no-gpu", action="store_true", help="allow no GPU device node")
    p = add(
        "verify",
        cmd_service_verify,
        "check the installed unit (systemd-analyze verify and security), config, bundle and "
        "calibration (exit 1 on any failure)",
        service,
    )
    p.add_argument("--root", default="/", metavar="DIR", help="the installation under DIR")
    p = add(
        "safe-stop",
        cmd_service_safe_stop,
        "stop the robot after the service ended, however it ended (systemd's ExecStopPost=); "
        "always exits 0",
        service,
    )
    p.add_argument(
        "--config", metavar="PATH", help="runtime TOML (default: $EDGEVLA_CONFIG, else embedded)"
    )
