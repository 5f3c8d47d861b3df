"""`edgevla calib`: hand-eye calibration for field technicians (docs/calibration.md).

    edgevla calib selftest [--mode eye_in_hand|eye_to_hand]   the whole flow on the MuJoCo cell
    edgevla calib plan --mode M (--sim | measured guesses) --out PLAN   reachable, diverse poses
    edgevla calib capture PLAN --out DATASET [--robot sim|ur]  drive, settle, photograph, judge
    edgevla calib solve DATASET --out FILE                    solve a captured dataset
    edgevla calib verify FILE DATASET                         held-out views against a file
    edgevla calib show FILE [--plot PNG]                      what a file holds

Registered by `cli.build_parser`; OpenCV is imported only inside these commands.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgevla.console import err, out
from edgevla.runtime.errors import EdgeVlaError


def _print_metrics(data: dict) -> None:
    name, T = next(iter(data["transforms"].items()))
    out.print(f"{name} ({data['mode'].replace('_', ' ')}, {data['method']}), metres:")
    for row in T:
        out.print("  " + "  ".join(f"{v:+.5f}" for v in row))
    m = data["metrics"]
    out.print(
        f"views used {m['views']}; methods agree within {m['method_disagreement_mm']:.2f} mm / "
        f"{m['method_disagreement_deg']:.3f}°; board spread {m['target_spread_mm']:.2f} mm / "
        f"{m['target_spread_deg']:.3f}° RMS; leave-one-out {m['leave_one_out_mm']:.2f} mm / "
        f"{m['leave_one_out_deg']:.3f}°; bootstrap σ {m['bootstrap_std_mm']:.2f} mm / "
        f"{m['bootstrap_std_deg']:.3f}°; rotation axis spread {m['axis_spread']:.2f}"
    )
    rejected = data.get("views", {}).get("rejected", {})
    for view, why in rejected.items():
        out.print(f"  view {view} rejected: {why}")


def cmd_calib_selftest(args: argparse.Namespace) -> int:
    import numpy as np

    from edgevla.calibration import calfile
    from edgevla.calibration.pipeline import plot, solve_dataset, verify, write_synthetic_dataset
    from edgevla.calibration.transforms import difference

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="edgevla-calib-"))
    data_dir, held_dir = work / "dataset", work / "held-out"
    mode_words = args.mode.replace("_", " ")
    if args.cell == "mujoco":
        from edgevla.calibration.simcell import capture_sim_dataset

        out.print(f"MuJoCo {mode_words} cell: planning {args.views} views, capturing ...")
        report, _, cell = capture_sim_dataset(args.mode, data_dir, views=args.views, seed=args.seed)
        capture_sim_dataset(args.mode, held_dir, views=5, seed=args.seed + 1000)
        X_true = cell.X_true
        out.print(
            f"captured {report.accepted} of {len(report.views)} views to {data_dir} "
            f"(robot driven through the safety filter, pictures after the arm settled), "
            f"5 more held out"
        )
    else:
        X_true = write_synthetic_dataset(
            data_dir, mode=args.mode, views=args.views, seed=args.seed
        )["X_true"]
        write_synthetic_dataset(held_dir, mode=args.mode, views=5, seed=args.seed + 1000)
        out.print(
            f"pinhole {mode_words} cell: {args.views} views rendered to {data_dir}, 5 held out"
        )
    cal_file = work / "calibration.json"
    solution, _, data = solve_dataset(data_dir, cal_file)
    _print_metrics(data)
    err_mm, err_deg = difference(solution.T, X_true)
    held = verify(calfile.load(cal_file), held_dir)
    png = plot(calfile.load(cal_file), solution, work / "residuals.png")
    ok = err_mm <= args.max_mm and err_deg <= args.max_deg
    result = {
        "mode": args.mode,
        "cell": args.cell,
        "error_mm": err_mm,
        "error_deg": err_deg,
        "held_out": held,
        "passed": ok,
        "calibration": str(cal_file),
        "plot": str(png),
        "truth": np.asarray(X_true).tolist(),
    }
    (work / "selftest.json").write_text(json.dumps(result, indent=2) + "\n")
    verdict = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
    out.print(
        f"{verdict} against the hidden truth: {err_mm:.3f} mm, {err_deg:.4f}° "
        f"(allowed {args.max_mm:g} mm, {args.max_deg:g}°); held-out views predicted within "
        f"{held['max_mm']:.2f} mm, corners {held['reprojection_rms_px']:.2f} px RMS"
    )
    out.print(f"wrote {cal_file}, {png}, {work / 'selftest.json'}")
    return 0 if ok else 1


def _vector(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise EdgeVlaError(f"{what}: numbers separated by commas, got {text!r}") from None
    if len(values) not in n:
        raise EdgeVlaError(f"{what}: {' or '.join(map(str, n))} numbers, got {text!r}")
    return values


def _guess_from_args(args: argparse.Namespace, spec) -> dict:
    """The plan's starting guesses: the sim cell's (a tape-measure's error off its hidden truth)
    or the technician's measurements."""
    import numpy as np

    from edgevla.calibration.simcell import default_cell, nominal_guess
    from edgevla.calibration.transforms import look_at, make_T, rotation

    if args.sim:
        return nominal_guess(default_cell(args.mode, spec), np.random.default_rng(args.seed))
    centre = spec.centre
    mount = _vector(args.camera_mount, (3,), "--camera-mount")
    if args.mode == "eye_in_hand":
        if args.board_at is None:
            raise EdgeVlaError("eye in hand: give --board-at X,Y,Z[,YAW] (the board's centre, m)")
        x, y, z, *yaw = _vector(args.board_at, (3, 4), "--board-at")
        R = rotation([1, 0, 0], 180.0) @ rotation([0, 0, 1], -(yaw[0] if yaw else 0.0))
        return {
            "T_base_board": make_T(R, np.array([x, y, z]) - R @ centre),
            "T_gripper_camera": make_T(np.eye(3), mount),
        }
    if args.camera_at is None or args.look_at is None:
        raise EdgeVlaError("eye to hand: give --camera-at X,Y,Z and --look-at X,Y,Z (m)")
    eye = np.array(_vector(args.camera_at, (3,), "--camera-at"))
    target = np.array(_vector(args.look_at, (3,), "--look-at"))
    R = rotation([1, 0, 0], 180.0)  # the printed face looks away from the flange
    return {
        "T_base_camera": look_at(eye, target),
        "T_gripper_board": make_T(R, -R @ centre + np.array([0, 0, args.board_offset])),
    }


def cmd_calib_plan(args: argparse.Namespace) -> int:
    import numpy as np

    from edgevla.calibration.board import BoardSpec
    from edgevla.calibration.capture import diversity_verdict
    from edgevla.calibration.plan import PlanSettings, make_plan
    from edgevla.runtime.config import load_config

    config = load_config(args.config)
    spec = BoardSpec(args.squares_x, args.squares_y, args.square_m, args.marker_m, args.dictionary)
    settings = PlanSettings(
        views=args.views,
        distance_m=args.distance,
        max_tilt_deg=args.max_tilt,
        max_roll_deg=args.max_roll,
        seed=args.seed,
    )
    plan = make_plan(
        args.mode,
        _guess_from_args(args, spec),
        spec,
        config.robot_model,
        config.limits,
        np.asarray(config.robot.initial_q_rad),
        settings,
    )
    plan.write(Path(args.out))
    out.print(
        f"{len(plan.views)} views planned for {args.mode.replace('_', ' ')} "
        f"({len(plan.skipped)} candidates left out); {diversity_verdict(plan.diversity)}"
    )
    for line in plan.skipped[:5]:
        out.print(f"  left out {line}")
    out.print(f"wrote {args.out}; next: edgevla calib capture {args.out} --out DATASET")
    return 0


def cmd_calib_capture(args: argparse.Namespace) -> int:
    import time

    from rich.progress import BarColumn, Progress, TextColumn

    from edgevla.calibration.board import BoardSpec
    from edgevla.calibration.capture import (
        Capture,
        CaptureSettings,
        diversity_verdict,
        plan_poses,
        run_capture,
    )
    from edgevla.calibration.plan import Plan
    from edgevla.runtime.config import load_config

    config = load_config(args.config)
    plan = Plan.load(Path(args.plan))
    spec = BoardSpec(**plan.board) if plan.board else BoardSpec()
    settings = CaptureSettings(speed_rad_s=args.speed)
    if args.robot == "sim":
        from edgevla.calibration.simcell import make_sim_cell

        robot, camera, _, clock = make_sim_cell(plan.mode, config.robot_model, spec)
        clock_fn, sleep = clock, clock.sleep
        camera_id = {"name": camera.name, "serial": camera.serial}
        robot_id = {"model": config.robot_model.name, "serial": "SIM"}
    else:
        from edgevla.cameras.realsense.camera import RealSenseCamera, RealSenseSettings
        from edgevla.robots.ur.driver import URConfig, URRobot

        serial = args.serial or (config.cameras.serials[0] if config.cameras.serials else "")
        if not serial:
            raise EdgeVlaError("give the camera's serial: --serial SN (edgevla camera list)")
        robot = URRobot(URConfig(args.ur_host or config.robot.host))
        robot.connect()
        camera = RealSenseCamera(
            RealSenseSettings("calibration", serial=serial, width=args.width, height=args.height)
        )
        clock_fn, sleep = time.monotonic, time.sleep
        camera_id = {"name": "calibration", "serial": serial}
        robot_id = {"model": config.robot_model.name, "serial": args.robot_serial}
    camera.start()
    try:
        intrinsics = camera.intrinsics
        camera_id.update(width=intrinsics.width, height=intrinsics.height)
        session = Capture(
            robot, camera, intrinsics, config.robot_model, config.limits, spec, settings,
            clock=clock_fn, sleep=sleep,
        )  # fmt: skip
        if args.manual:
            poses = _manual_poses(args.manual)
            total = args.manual
        else:
            poses, total = plan_poses(plan), len(plan.views)
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
        ]
        with Progress(*columns, console=out, transient=False) as progress:
            task = progress.add_task("capturing", total=total)

            def on_view(k, record, div) -> None:
                mark = "[green]ok[/green]" if record.accepted else f"[red]{record.reason}[/red]"
                progress.console.print(f"view {k:03d}: {mark} ({record.corners} corners)")
                progress.update(task, advance=1, description=diversity_verdict(div))

            report = run_capture(
                session, poses, Path(args.out), mode=plan.mode, camera_id=camera_id,
                robot_id=robot_id, on_view=on_view,
            )  # fmt: skip
    finally:
        camera.stop()
        robot.close()
    out.print(
        f"{report.accepted} of {len(report.views)} views accepted; "
        f"{diversity_verdict(report.diversity)}; wrote {Path(args.out) / 'dataset.json'}"
    )
    if report.aborted:
        err.print(f"[red]capture stopped early:[/red] {report.aborted}")
        return 1
    out.print(f"next: edgevla calib solve {args.out} --out calibration.json")
    return 0


def _manual_poses(count: int):
    """Hand-guided views: the technician places the arm (freedrive), then presses Enter."""
    for k in range(count):
        answer = input(f"view {k + 1}/{count}: place the arm, release freedrive, Enter (q: done) ")
        if answer.strip().lower() == "q":
            return
        yield None


def cmd_calib_solve(args: argparse.Namespace) -> int:
    from edgevla.calibration.pipeline import plot, solve_dataset

    solution, _, data = solve_dataset(Path(args.dataset), Path(args.out))
    _print_metrics(data)
    if args.plot:
        from edgevla.calibration import calfile

        plot(calfile.load(args.out), solution, Path(args.plot))
    out.print(f"wrote {args.out}")
    return 0


def cmd_calib_verify(args: argparse.Namespace) -> int:
    from edgevla.calibration import calfile
    from edgevla.calibration.pipeline import verify

    cal = calfile.load(args.file)
    result = verify(cal, Path(args.dataset))
    ok = result["max_mm"] <= args.max_mm and result["reprojection_rms_px"] <= args.max_px
    mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
    out.print(
        f"{mark} {result['views']} held-out views: board predicted within "
        f"{result['max_mm']:.2f} mm (RMS {result['rms_mm']:.2f}), corners reprojected "
        f"{result['reprojection_rms_px']:.2f} px RMS (allowed {args.max_mm:g} mm, "
        f"{args.max_px:g} px); rotation within {result['max_deg']:.3f}°"
    )
    if args.previous:
        from edgevla.calibration.transforms import difference

        previous = calfile.load(args.previous)
        name = next(iter(cal.data["transforms"]))
        if name not in previous.data["transforms"]:
            raise EdgeVlaError(f"{args.previous} holds no {name}: another calibration mode")
        mm, deg = difference(previous.transform(name), cal.transform(name))
        moved = mm > args.max_drift_mm or deg > args.max_drift_deg
        mark = "[yellow]MOVED[/yellow]" if moved else "[green]same[/green]"
        out.print(
            f"{mark} against {args.previous} ({previous.data['created_utc']}): {name} differs "
            f"by {mm:.2f} mm, {deg:.3f}° (allowed {args.max_drift_mm:g} mm, "
            f"{args.max_drift_deg:g}°): "
            + ("the camera or its mount moved since then" if moved else "no drift")
        )
        ok = ok and not moved
    return 0 if ok else 1


def cmd_calib_doctor(args: argparse.Namespace) -> int:
    from edgevla.calibration import doctor

    checks = doctor.check_libraries()
    if args.serial:
        checks += doctor.check_camera(args.serial, args.width, args.height)
    if args.ur_host:
        checks += doctor.check_robot(args.ur_host, args.robot_model)
    for c in checks:
        mark = "[green]ok[/green]  " if c.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {c.name}: {c.detail}")
    return 0 if all(c.ok for c in checks) else 1


def cmd_calib_intrinsics(args: argparse.Namespace) -> int:
    from edgevla.calibration.pipeline import refit_intrinsics

    r = refit_intrinsics(Path(args.dataset))
    ok = r["focal_drift_pct"] <= args.max_focal_pct and r["centre_drift_px"] <= args.max_centre_px
    mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
    out.print(
        f"{mark} refit from {r['views']} views, RMS {r['rms_px']:.3f} px: fx {r['fx']:.1f}, "
        f"fy {r['fy']:.1f}, centre ({r['ppx']:.1f}, {r['ppy']:.1f}); against the stated "
        f"intrinsics: focal {r['focal_drift_pct']:.2f} % (allowed {args.max_focal_pct:g}), "
        f"centre {r['centre_drift_px']:.1f} px (allowed {args.max_centre_px:g})"
    )
    if not ok:
        out.print(
            "the camera's stated (factory) intrinsics do not fit its images: check the "
            "stream resolution, or use the refit"
        )
    return 0 if ok else 1


def cmd_calib_show(args: argparse.Namespace) -> int:
    from edgevla.calibration import calfile

    cal = calfile.load(args.file)
    d = cal.data
    out.print(
        f"{cal.path}: made {d['created_utc']} ({cal.age_days():.0f} days ago) with "
        f"edgevla {d['tool']['edgevla']}, OpenCV {d['tool']['opencv']}; camera "
        f"{d['camera']['name']} serial {d['camera']['serial']} at "
        f"{d['camera']['width']}x{d['camera']['height']}"
    )
    _print_metrics(d)
    if args.plot:
        from edgevla.calibration.pipeline import plot

        out.print(f"wrote {plot(cal, None, Path(args.plot))}")
    return 0


def register(sub, add, group) -> None:
    calib = group("calib", "hand-eye calibration with a ChArUco board (docs/calibration.md)")
    p = add(
        "selftest",
        cmd_calib_selftest,
        "the whole flow on a simulated cell with a hidden true mounting: plan, drive the "
        "simulated UR5e, capture, solve, verify, report",
        calib,
    )
    p.add_argument("--mode", choices=("eye_in_hand", "eye_to_hand"), default="eye_in_hand")
    p.add_argument(
        "--cell",
        choices=("mujoco", "pinhole"),
        default="mujoco",
        help="mujoco: the board and camera in the MuJoCo scene, the arm driven through a plan; "
        "pinhole: the board warped into views directly (faster, no robot)",
    )
    p.add_argument("--views", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="keep the dataset, file, report and plot here")
    p.add_argument("--max-mm", type=float, default=1.0)
    p.add_argument("--max-deg", type=float, default=0.1)
    p = add(
        "plan",
        cmd_calib_plan,
        "reachable robot poses that show the board from diverse directions (tilt, azimuth, "
        "roll), from a tape-measured guess of where the board or camera is",
        calib,
    )
    g = p.add_argument_group("board (defaults: the 7 x 5 board `calib selftest` uses)")
    g.add_argument("--squares-x", type=int, default=7)
    g.add_argument("--squares-y", type=int, default=5)
    g.add_argument("--square-m", type=float, default=0.04)
    g.add_argument("--marker-m", type=float, default=0.03)
    g.add_argument("--dictionary", default="DICT_5X5_100")
    p.add_argument("--mode", choices=("eye_in_hand", "eye_to_hand"), default="eye_in_hand")
    p.add_argument("--out", required=True, metavar="PLAN", help="the plan file (JSON)")
    p.add_argument("--sim", action="store_true", help="plan for the simulated cell")
    p.add_argument("--board-at", metavar="X,Y,Z[,YAW]", help="eye in hand: board centre, m")
    p.add_argument("--camera-at", metavar="X,Y,Z", help="eye to hand: camera position, m")
    p.add_argument("--look-at", metavar="X,Y,Z", help="eye to hand: a point the camera sees")
    p.add_argument(
        "--camera-mount",
        default="0,0,0.05",
        metavar="X,Y,Z",
        help="eye in hand: camera position in the flange frame from the drawing (m); it is "
        "assumed to look along the tool",
    )
    p.add_argument(
        "--board-offset", type=float, default=0.1, help="eye to hand: board beyond the flange, m"
    )
    p.add_argument("--views", type=int, default=18)
    p.add_argument("--distance", type=float, default=0.0, help="camera to board, m (0: default)")
    p.add_argument("--max-tilt", type=float, default=35.0)
    p.add_argument("--max-roll", type=float, default=40.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", metavar="TOML", help="runtime config: robot model, limits, start")
    p = add(
        "capture",
        cmd_calib_capture,
        "drive the robot through a plan (or follow hand-guided poses), wait for the arm to "
        "settle, photograph, accept or reject each view with a reason; shows a diversity meter",
        calib,
    )
    p.add_argument("plan", metavar="PLAN")
    p.add_argument("--out", required=True, metavar="DATASET")
    p.add_argument("--robot", choices=("sim", "ur"), default="sim")
    p.add_argument("--ur-host", metavar="IP", help="default: robot.host of --config")
    p.add_argument("--robot-serial", default="", help="recorded in the dataset and the file")
    p.add_argument("--serial", metavar="SN", help="the RealSense (default: cameras.serials[0])")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--speed", type=float, default=0.5, help="joint speed cap, rad/s")
    p.add_argument(
        "--manual",
        type=int,
        metavar="N",
        default=0,
        help="up to N hand-guided views instead of the plan's: nothing is commanded",
    )
    p.add_argument("--config", metavar="TOML", help="runtime config: robot model and limits")
    p = add(
        "solve",
        cmd_calib_solve,
        "solve a dataset into a calibration file; refuses data "
        "that cannot give a trustworthy transform, saying why",
        calib,
    )
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--plot", metavar="PNG")
    p = add("verify", cmd_calib_verify, "predict held-out views from a calibration file", calib)
    p.add_argument("file", metavar="FILE")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--max-mm", type=float, default=3.0)
    p.add_argument("--max-px", type=float, default=1.5)
    p.add_argument("--previous", metavar="FILE", help="an older calibration file: report drift")
    p.add_argument("--max-drift-mm", type=float, default=2.0)
    p.add_argument("--max-drift-deg", type=float, default=0.2)
    p = add(
        "doctor",
        cmd_calib_doctor,
        "before capturing: libraries, the camera and its stream, the robot and a zero TCP offset",
        calib,
    )
    p.add_argument("--serial", metavar="SN", help="the RealSense to calibrate")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--ur-host", metavar="IP", help="the UR controller")
    p.add_argument("--robot-model", choices=("ur5e", "ur5"), default="ur5e")
    p = add(
        "intrinsics",
        cmd_calib_intrinsics,
        "the stated (factory) intrinsics against a refit"
        " from a dataset's board views: RMS, focal and centre drift",
        calib,
    )
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--max-focal-pct", type=float, default=1.0)
    p.add_argument("--max-centre-px", type=float, default=8.0)
    p = add("show", cmd_calib_show, "what a calibration file holds (hash-checked)", calib)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--plot", metavar="PNG")
