"""`edgevla camera`: list RealSense devices, record them (or the simulated cell) to `.db3`, and
describe a device or a recording.

Registered by `cli.build_parser`; pyrealsense2 is imported only inside these commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgevla.console import out
from edgevla.runtime.errors import InvalidSetting


def _info(dev: Any, key: Any) -> str:
    try:
        return str(dev.get_info(key)) if dev.supports(key) else "-"
    except RuntimeError:
        return "-"


def cmd_camera_list(args: argparse.Namespace) -> int:
    from edgevla.cameras.realsense.camera import require_pyrealsense2

    rs = require_pyrealsense2()
    devices = list(rs.context().query_devices())
    if not devices:
        out.print(
            "no RealSense connected (without librealsense's udev rules, or in a container without"
            " /dev/bus/usb, a connected camera is not listed; docs/realsense.md)"
        )
        return 0
    table = Table("serial", "name", "firmware", "USB", title="RealSense devices")
    ci = rs.camera_info
    for dev in devices:
        table.add_row(
            _info(dev, ci.serial_number),
            _info(dev, ci.name),
            _info(dev, ci.firmware_version),
            _info(dev, ci.usb_type_descriptor),
        )
    out.print(table)
    return 0


def _stream(args: argparse.Namespace):
    from edgevla.cameras.realsense.recording import StreamSpec

    if args.width < 1 or args.height < 1 or args.fps < 1:
        raise InvalidSetting("--width/--height/--fps", "each must be >= 1")
    return StreamSpec(args.width, args.height, args.fps)


def cmd_camera_record(args: argparse.Namespace) -> int:
    from edgevla.cameras.realsense.recording import record_device, record_sim

    if args.seconds <= 0:
        raise InvalidSetting("--seconds", f"must be > 0, got {args.seconds:g}")
    out_path = Path(args.out)
    if out_path.suffix != ".db3":
        raise InvalidSetting("--out", f"{out_path}: librealsense 2.59 writes .db3; name it so")
    if out_path.exists() and not args.overwrite:
        raise InvalidSetting("--out", f"{out_path} exists; pass --overwrite to replace it")
    stream = _stream(args)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(f"{phase:8s}", total=total)
            bar.update(tasks[phase], completed=done)

        if args.sim:
            summary = record_sim(
                out_path,
                seconds=args.seconds,
                stream=stream,
                camera=args.sim,
                episode_seed=args.episode,
                depth=args.depth,
                progress=progress,
            )
        else:
            summary = record_device(
                out_path,
                args.serial,
                seconds=args.seconds,
                stream=stream,
                depth=args.depth,
                progress=progress,
            )
    out.print(
        f"wrote {summary['path']}: {summary['frames']} frames of {summary['source']}"
        f" (serial {summary['serial']}), colour {stream.width}x{stream.height} at {stream.fps}"
        f" fps{', depth' if summary['depth'] else ''}"
    )
    return 0


def cmd_camera_info(args: argparse.Namespace) -> int:
    from edgevla.cameras.realsense.camera import connected_serials, require_pyrealsense2
    from edgevla.runtime.devices import CameraNotFound

    rs = require_pyrealsense2()
    ctx = rs.context()
    source = args.source
    if source.endswith(".db3") or Path(source).exists():
        if not Path(source).is_file():
            raise CameraNotFound(f"no recording at {source}")
        try:
            dev = ctx.load_device(source)
        except RuntimeError as exc:
            raise CameraNotFound(f"{source}: not a librealsense recording ({exc})") from exc
        duration = dev.as_playback().get_duration().total_seconds()
        what = f"recording {source}, {duration:.2f} s"
    else:
        serials = connected_serials(rs)
        if source not in serials:
            raise CameraNotFound(
                f"no RealSense with serial {source} is connected"
                f" (connected: {', '.join(serials) or 'none'})"
            )
        serial = rs.camera_info.serial_number
        dev = next(d for d in ctx.query_devices() if _info(d, serial) == source)
        what = f"RealSense {source}"
    out.print(
        f"{what}: {_info(dev, rs.camera_info.name)}, serial"
        f" {_info(dev, rs.camera_info.serial_number)}"
    )
    table = Table("sensor", "stream", "format", "size", "fps", "fx", "fy", "ppx", "ppy", "model")
    for sensor in dev.query_sensors():
        name = _info(sensor, rs.camera_info.name)
        for p in sensor.get_stream_profiles():
            if not p.is_video_stream_profile():
                continue
            v = p.as_video_stream_profile()
            if not args.all and not _wanted(v, args):
                continue
            i = v.get_intrinsics()
            table.add_row(
                name,
                p.stream_name(),
                str(p.format()).rsplit(".", 1)[-1],
                f"{v.width()}x{v.height()}",
                str(p.fps()),
                f"{i.fx:.2f}",
                f"{i.fy:.2f}",
                f"{i.ppx:.2f}",
                f"{i.ppy:.2f}",
                str(i.model).rsplit(".", 1)[-1],
            )
    out.print(table)
    return 0


def _wanted(v: Any, args: argparse.Namespace) -> bool:
    """Without --all, a live camera's long profile list is cut to the asked width and height."""
    return (args.width is None or v.width() == args.width) and (
        args.height is None or v.height() == args.height
    )


def register(sub, add, group) -> None:
    """Add `camera list|record|info` to the `edgevla` parser (see `cli.build_parser`)."""
    camera = group("camera", "RealSense cameras: list, record (.db3), describe (docs/realsense.md)")
    add("list", cmd_camera_list, "the RealSense devices connected now", camera)

    p = add(
        "record",
        cmd_camera_record,
        "record a RealSense, or a simulated camera through a librealsense software device, to a"
        " .db3 that `cameras.recordings` plays through the same pipeline",
        camera,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--serial", metavar="SN", help="a connected RealSense")
    source.add_argument(
        "--sim",
        metavar="CAMERA",
        choices=("scene", "wrist"),
        help="the simulated cell's scene or wrist camera, watching the scripted expert",
    )
    p.add_argument("--out", required=True, metavar="FILE.db3")
    p.add_argument("--seconds", type=float, default=10.0, metavar="S")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--depth", action="store_true", help="also record depth (z16)")
    p.add_argument("--episode", type=int, default=0, metavar="SEED", help="with --sim")
    p.add_argument("--overwrite", action="store_true")

    p = add(
        "info",
        cmd_camera_info,
        "name, serial, streams and intrinsics of a connected RealSense or of a .db3 recording",
        camera,
    )
    p.add_argument("source", metavar="SERIAL|FILE.db3")
    p.add_argument("--width", type=int, help="only profiles of this width x --height")
    p.add_argument("--height", type=int)
    p.add_argument("--all", action="store_true", help="every profile of a live camera")
