"""`calib doctor`: what must hold before a calibration is worth capturing.

Each check says what it found and, when it fails, what to do. The TCP check matters most: a
calibration is of the flange, and ur_rtde reports the TCP; with a TCP offset set on the pendant
every robot pose in the dataset is off by it, and the answer absorbs the error silently.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import numpy as np

from edgevla.runtime.kinematics import ROBOT_MODELS, ForwardKinematics


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_libraries() -> list[Check]:
    import cv2

    major = int(cv2.__version__.split(".")[0])
    charuco = hasattr(cv2.aruco, "CharucoDetector")
    checks = [
        Check(
            "OpenCV",
            major < 5 and charuco,
            f"{cv2.__version__}"
            + ("" if charuco else ": no CharucoDetector (need >= 4.7)")
            + (": OpenCV 5 changed the calibration API; install < 5" if major >= 5 else ""),
        )
    ]
    for dist, why in (("pyrealsense2", "RealSense cameras"), ("ur-rtde", "a UR robot")):
        v = _version(dist)
        checks.append(Check(dist, True, v or f"not installed (needed only for {why})"))
    return checks


def check_camera(serial: str, width: int, height: int) -> list[Check]:
    from edgevla.cameras.realsense.camera import connected_serials, require_pyrealsense2

    rs = require_pyrealsense2()
    serials = connected_serials(rs)
    if serial not in serials:
        return [
            Check(
                "camera",
                False,
                f"no RealSense with serial {serial} (connected: {', '.join(serials) or 'none'})",
            )
        ]
    dev = next(
        d
        for d in rs.context().query_devices()
        if d.get_info(rs.camera_info.serial_number) == serial
    )
    sizes = {
        (p.as_video_stream_profile().width(), p.as_video_stream_profile().height())
        for s in dev.query_sensors()
        for p in s.get_stream_profiles()
        if p.stream_type() == rs.stream.color and p.is_video_stream_profile()
    }
    ok = (width, height) in sizes
    return [
        Check(
            "camera",
            ok,
            f"{serial} connected; colour {width}x{height} "
            + ("offered" if ok else f"NOT offered (offered: {sorted(sizes)})"),
        )
    ]


def tcp_offset(q: np.ndarray, tcp_pose: np.ndarray, model: str) -> tuple[float, float]:
    """(mm, degrees) between the reported TCP pose and the flange by forward kinematics."""
    import cv2

    from edgevla.calibration.transforms import difference, make_T

    flange = ForwardKinematics(ROBOT_MODELS[model]).flange_pose(np.asarray(q, dtype=float))
    tcp = make_T(cv2.Rodrigues(np.asarray(tcp_pose[3:], dtype=float))[0], tcp_pose[:3])
    return difference(np.array(flange), tcp)


def check_robot(host: str, model: str) -> list[Check]:
    try:
        import rtde_receive
    except ImportError:
        return [Check("robot", False, "ur_rtde is not installed (pip install 'edgevla[ur]')")]
    try:
        receive = rtde_receive.RTDEReceiveInterface(host)
    except RuntimeError as exc:
        return [Check("robot", False, f"cannot reach a UR controller at {host}: {exc}")]
    try:
        q = np.asarray(receive.getActualQ())
        pose = np.asarray(receive.getActualTCPPose())
    finally:
        receive.disconnect()
    mm, deg = tcp_offset(q, pose, model)
    ok = mm < 1.0 and deg < 0.1
    detail = f"{host} reachable; TCP vs flange {mm:.1f} mm / {deg:.2f}°"
    if not ok:
        detail += (
            ": a TCP offset is set. Set it to zero on the pendant (Installation → "
            "TCP) while calibrating, or the robot poses are the TCP's, not the flange's"
        )
    return [Check("robot", True, f"{host} reachable"), Check("TCP offset", ok, detail)]
