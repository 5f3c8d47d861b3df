"""The RealSense driver against a connected camera. Read docs/hil.md before running these.

    pytest -m hil tests/hil --realsense-serial 123622270081   (or REALSENSE_SERIAL=...)

The unplug/replug test needs a person at the cable: it runs only with REALSENSE_REPLUG=1 and
prints what to do and when.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.hil

WIDTH, HEIGHT, FPS = 640, 480, 30
REPLUG_WAIT_S = 60.0


@pytest.fixture(scope="module")
def serial(request: pytest.FixtureRequest) -> str:
    sn = request.config.getoption("--realsense-serial") or os.environ.get("REALSENSE_SERIAL")
    if not sn:
        pytest.skip(
            "needs a RealSense: pass --realsense-serial SN or set REALSENSE_SERIAL"
            " (`edgevla camera list` shows it; docs/hil.md)"
        )
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed (realsense extra)")
    return sn


def _camera(serial: str, **kw):
    from edgevla.cameras.realsense import RealSenseCamera, RealSenseSettings

    settings = {"width": WIDTH, "height": HEIGHT, "fps": FPS, **kw}
    return RealSenseCamera(RealSenseSettings("hil", serial=serial, **settings))


def _collect(cam, seconds: float) -> list:
    frames, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        frames.append(cam.read(1.0))
    return frames


def test_streams_colour_and_aligned_depth(serial: str) -> None:
    cam = _camera(serial, depth=True)
    cam.start()
    try:
        frames = _collect(cam, 5.0)
    finally:
        cam.stop()
    print(f"\n{len(frames)} frames in 5 s, {cam.frames_lost} lost by the device or pipeline")
    assert len(frames) > 0.8 * 5 * FPS
    assert frames[-1].image.shape == (HEIGHT, WIDTH, 3)
    assert frames[-1].depth_m is not None and frames[-1].depth_m.shape == (HEIGHT, WIDTH)
    assert (frames[-1].depth_m > 0).mean() > 0.2, "depth mostly empty: lens cap, or too close?"
    numbers = [f.frame_number for f in frames]
    assert numbers == sorted(numbers)


def test_intrinsics_match_the_stream_and_a_wrong_calibration_is_refused(serial: str) -> None:
    from edgevla.runtime.devices import IntrinsicsMismatch

    cam = _camera(serial)
    cam.start()
    try:
        i = cam.intrinsics
    finally:
        cam.stop()
    print(f"\nintrinsics: {i}")
    assert (i.width, i.height) == (WIDTH, HEIGHT)
    assert 100 < i.fx < 5000 and 100 < i.fy < 5000
    assert 0 < i.ppx < WIDTH and 0 < i.ppy < HEIGHT
    wrong = type(i)(1280, 720, i.fx, i.fy, i.ppx, i.ppy)
    with pytest.raises(IntrinsicsMismatch, match="1280x720"):
        _camera(serial, calibrated=wrong).start()


def test_frame_age_is_known_and_small(serial: str) -> None:
    cam = _camera(serial)
    cam.start()
    try:
        frames = _collect(cam, 3.0)
    finally:
        cam.stop()
    transport = np.array([f.t_arrival_s - f.t_capture_s for f in frames]) * 1e3
    print(
        f"\ncapture → arrival ms: p50 {np.percentile(transport, 50):.1f}"
        f" p99 {np.percentile(transport, 99):.1f} max {transport.max():.1f}"
    )
    # Capture before arrival, and not from another epoch: the mapping is on the host clock.
    assert transport.min() >= -1.0 and transport.max() < 1000.0


def test_record_then_play_back_through_the_driver(serial: str, tmp_path: Path) -> None:
    from edgevla.cameras.realsense import RealSenseCamera, RealSenseSettings
    from edgevla.cameras.realsense.recording import StreamSpec, record_device

    path = tmp_path / "live.db3"
    summary = record_device(path, serial, seconds=2.0, stream=StreamSpec(WIDTH, HEIGHT, FPS))
    assert summary["frames"] > 30
    cam = RealSenseCamera(
        RealSenseSettings("replay", recording=str(path), width=WIDTH, height=HEIGHT)
    )
    cam.start()
    try:
        frame = cam.read(3.0)
    finally:
        cam.stop()
    assert frame.image.shape == (HEIGHT, WIDTH, 3)


def test_unplug_and_replug_recovers(serial: str) -> None:
    if os.environ.get("REALSENSE_REPLUG") != "1":
        pytest.skip("needs a person at the cable: set REALSENSE_REPLUG=1 (docs/hil.md)")
    from edgevla.runtime.devices import CameraTimeout

    cam = _camera(serial, stall_s=0.5, reconnect_deadline_s=10.0)
    cam.start()
    try:
        cam.read(2.0)
        print(f"\n>>> UNPLUG the camera's USB cable now (waiting up to {REPLUG_WAIT_S:.0f} s)")
        end = time.monotonic() + REPLUG_WAIT_S
        while cam.state == "streaming" and time.monotonic() < end:
            time.sleep(0.1)
        assert cam.state != "streaming", "the camera never stopped streaming"
        with pytest.raises(CameraTimeout):
            cam.read(1.0)
        print(f">>> PLUG it back in now (waiting up to {REPLUG_WAIT_S:.0f} s)")
        end = time.monotonic() + REPLUG_WAIT_S
        while time.monotonic() < end:
            try:
                cam.read(1.0)
                break
            except CameraTimeout:
                continue
        assert cam.state == "streaming" and cam.recoveries >= 1, (cam.state, cam.detail)
        print(f"recovered after {cam.stalls} stall(s), {cam.recoveries} recovery(ies)")
    finally:
        cam.stop()
