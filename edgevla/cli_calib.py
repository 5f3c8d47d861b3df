"""`edgevla calib`: hand-eye calibration for field technicians (docs/calibration.md).

    edgevla calib selftest [--mode eye_in_hand|eye_to_hand]   the whole flow on a synthetic cell
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

from edgevla.console import out


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
    truth = write_synthetic_dataset(data_dir, mode=args.mode, views=args.views, seed=args.seed)
    write_synthetic_dataset(held_dir, mode=args.mode, views=5, seed=args.seed + 1000)
    out.print(
        f"synthetic {args.mode.replace('_', ' ')} cell: {args.views} views rendered to "
        f"{data_dir}, 5 held out"
    )
    cal_file = work / "calibration.json"
    solution, _, data = solve_dataset(data_dir, cal_file)
    _print_metrics(data)
    err_mm, err_deg = difference(solution.T, truth["X_true"])
    held = verify(calfile.load(cal_file), held_dir)
    png = plot(calfile.load(cal_file), solution, work / "residuals.png")
    ok = err_mm <= args.max_mm and err_deg <= args.max_deg
    report = {
        "mode": args.mode,
        "error_mm": err_mm,
        "error_deg": err_deg,
        "held_out": held,
        "passed": ok,
        "calibration": str(cal_file),
        "plot": str(png),
        "truth": np.asarray(truth["X_true"]).tolist(),
    }
    (work / "selftest.json").write_text(json.dumps(report, indent=2) + "\n")
    verdict = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
    out.print(
        f"{verdict} against the hidden truth: {err_mm:.3f} mm, {err_deg:.4f}° "
        f"(allowed {args.max_mm:g} mm, {args.max_deg:g}°); held-out views predicted within "
        f"{held['max_mm']:.2f} mm, corners {held['reprojection_rms_px']:.2f} px RMS"
    )
    out.print(f"wrote {cal_file}, {png}, {work / 'selftest.json'}")
    return 0 if ok else 1


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

    result = verify(calfile.load(args.file), Path(args.dataset))
    ok = result["max_mm"] <= args.max_mm and result["reprojection_rms_px"] <= args.max_px
    mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
    out.print(
        f"{mark} {result['views']} held-out views: board predicted within "
        f"{result['max_mm']:.2f} mm (RMS {result['rms_mm']:.2f}), corners reprojected "
        f"{result['reprojection_rms_px']:.2f} px RMS (allowed {args.max_mm:g} mm, "
        f"{args.max_px:g} px); rotation within {result['max_deg']:.3f}°"
    )
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
        "the whole flow on a synthetic cell with a hidden "
        "true mounting: render, detect, solve, verify, report",
        calib,
    )
    p.add_argument("--mode", choices=("eye_in_hand", "eye_to_hand"), default="eye_in_hand")
    p.add_argument("--views", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="keep the dataset, file, report and plot here")
    p.add_argument("--max-mm", type=float, default=1.0)
    p.add_argument("--max-deg", type=float, default=0.1)
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
