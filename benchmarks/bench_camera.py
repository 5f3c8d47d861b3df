"""RealSense capture overhead and dropped frames at 30 fps, through the real librealsense pipeline.

  python benchmarks/bench_camera.py [--seconds 10] [--run-seconds 30] [--bundle out/demo-bundle]

Two recordings of the simulated cell (scene and wrist camera, colour 640x480 at 30 fps) are
written through a librealsense software device, then played through `rs.pipeline` three ways:

  bare pipeline   a loop on `try_wait_for_frames` that copies each colour frame out: what
                  librealsense itself costs (the baseline)
  driver          `RealSenseCamera`, with a reader blocked in `read()`: the capture thread,
                  clock mapping, crop and resize to the policy's size, and the hand-over
  runtime         `edgevla run` on both recordings (looped) with the simulated arm: arrival of
                  the newest frame of a set to the set being usable by System 1 and System 2,
                  while both systems plan and the control process runs at 500 Hz

For each: arrival → available p50 / p99 / max in ms, with each p50 and p99 as a ratio to the bare
pipeline's; frames lost before the host had them (gaps in frame numbers); for the runtime also
the frames System 1/2 never saw because a newer one had arrived (it reads the newest).
Prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, machine, save
from rich.console import Console
from rich.table import Table

from edgevla.export.bundle_writer import library_versions

WIDTH, HEIGHT, FPS = 640, 480, 30


def stats_ms(values_s: list[float]) -> dict[str, float]:
    v = np.asarray(values_s) * 1e3
    return {
        "p50": float(np.percentile(v, 50)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "samples": len(v),
    }


def bare_pipeline(path: Path) -> dict:
    import pyrealsense2 as rs

    pipeline = rs.pipeline()
    config = rs.config()
    config.enable_device_from_file(str(path), repeat_playback=False)
    config.enable_stream(rs.stream.color, WIDTH, HEIGHT, rs.format.rgb8, FPS)
    pipeline.start(config)
    costs, numbers = [], []
    try:
        while True:
            ok, frames = pipeline.try_wait_for_frames(1000)
            if not ok:
                break
            arrival = time.monotonic()
            color = frames.get_color_frame()
            image = np.array(color.get_data(), dtype=np.uint8, copy=True)
            costs.append(time.monotonic() - arrival)
            numbers.append(color.get_frame_number())
            del image
    finally:
        pipeline.stop()
    return {"available_ms": stats_ms(costs), "frames": len(numbers), "lost": _gaps(numbers)}


def _gaps(numbers: list[int]) -> int:
    d = np.diff(numbers)
    return int(d[d > 1].sum() - (d > 1).sum())


def driver_alone(path: Path, image_size: int) -> dict:
    from edgevla.cameras.realsense import RealSenseCamera, RealSenseSettings
    from edgevla.runtime.devices import CameraTimeout

    cam = RealSenseCamera(
        RealSenseSettings(
            "scene",
            recording=str(path),
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            output_size=image_size,
        )
    )
    costs, numbers = [], []
    cam.start()
    try:
        while True:
            try:
                frame = cam.read(1.5)
            except CameraTimeout:
                break
            costs.append(time.monotonic() - frame.t_arrival_s)
            numbers.append(frame.frame_number)
    finally:
        cam.stop()
    return {
        "available_ms": stats_ms(costs),
        "frames": len(numbers),
        "lost": cam.frames_lost,
        "skipped_by_reader": _gaps(numbers) - cam.frames_lost,
    }


def runtime_run(paths: dict[str, Path], bundle: str, seconds: float) -> dict:
    from edgevla.runtime.config import config_from_dict
    from edgevla.runtime.supervisor import RunOptions, Supervisor

    raw = {
        "policy": {"bundle": bundle},
        "cameras": {
            "kind": "realsense",
            "names": ["scene", "wrist"],
            "recordings": [str(paths["scene"]), str(paths["wrist"])],
            "loop_recordings": True,
            "width": WIDTH,
            "height": HEIGHT,
            "fps": FPS,
        },
    }
    options = RunOptions(duration_s=seconds, live=False)
    report = Supervisor(config_from_dict(raw, "bench"), options).run()
    cams = report["cameras"]
    return {
        "available_ms": cams["arrival_to_published_ms"],
        "age_when_published_ms": cams["age_when_published_ms"],
        "published_sets": cams["published"],
        "lost": cams["lost_by_driver"],
        "skipped_by_reader": cams["dropped"] - cams["lost_by_driver"],
        "stale_sets": cams["stale_sets"],
        "trips": [t["cause"] for t in report["trips"]],
        "system1_hz": report["system1"]["rate_hz"],
        "system2_hz": report["system2"]["rate_hz"],
        "control_period_error_us": report["control"]["period_error_us"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each recording")
    parser.add_argument("--run-seconds", type=float, default=30.0, help="the runtime run")
    parser.add_argument("--bundle", default="out/demo-bundle")
    args = parser.parse_args()
    console = Console(highlight=False)
    from edgevla.cameras.realsense.recording import StreamSpec, record_sim
    from edgevla.runtime.bundle import load_bundle

    image_size = load_bundle(args.bundle).model.image_size
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for camera in ("scene", "wrist"):
            paths[camera] = Path(tmp) / f"{camera}.db3"
            console.print(f"recording the simulated {camera} camera, {args.seconds:g} s")
            record_sim(
                paths[camera],
                seconds=args.seconds,
                stream=StreamSpec(WIDTH, HEIGHT, FPS),
                camera=camera,
            )
        console.print("bare pipeline (baseline)")
        results = {"bare pipeline (baseline)": bare_pipeline(paths["scene"])}
        console.print("driver alone")
        results["driver"] = driver_alone(paths["scene"], image_size)
        console.print(f"edgevla run on both recordings, {args.run_seconds:g} s")
        results["runtime (2 cameras)"] = runtime_run(paths, args.bundle, args.run_seconds)
    base = results["bare pipeline (baseline)"]["available_ms"]
    table = Table(
        title=f"RealSense capture, colour {WIDTH}x{HEIGHT} at {FPS} fps, recordings through "
        "rs.pipeline: frame arrival → available"
    )
    for column in (
        "path",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p50 / base",
        "p99 / base",
        "lost",
        "skipped by reader",
    ):
        table.add_column(column)
    for name, r in results.items():
        a = r["available_ms"]
        r["p50_ratio"] = a["p50"] / base["p50"] if base["p50"] > 0 else float("inf")
        r["p99_ratio"] = a["p99"] / base["p99"] if base["p99"] > 0 else float("inf")
        table.add_row(
            name,
            f"{a['p50']:.3f}",
            f"{a['p99']:.3f}",
            f"{a['max']:.3f}",
            f"{r['p50_ratio']:.1f}",
            f"{r['p99_ratio']:.1f}",
            str(r["lost"]),
            str(r.get("skipped_by_reader", "-")),
        )
    console.print(table)
    rt = results["runtime (2 cameras)"]
    console.print(
        f"runtime: {rt['published_sets']} frame sets published in {args.run_seconds:g} s, "
        f"{rt['stale_sets']} stale, age when published p50 {rt['age_when_published_ms']['p50']:.1f}"
        f" ms; System 1 {rt['system1_hz']:.1f} Hz, System 2 {rt['system2_hz']:.1f} Hz; trips "
        f"{rt['trips']}"
    )
    record = {
        "benchmark": "camera",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "libraries": {
            **library_versions(),
            "pyrealsense2": importlib.metadata.version("pyrealsense2"),
        },
        "stream": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "policy_image_size": image_size},
        "recording_s": args.seconds,
        "run_s": args.run_seconds,
        "results": results,
    }
    path = save(record, RESULTS, "camera")
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
