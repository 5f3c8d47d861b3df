"""The RealSense driver through the real librealsense pipeline, with no camera attached.

Recordings are written from the simulated cell through a librealsense software device and played
back through `rs.pipeline` by the same `RealSenseCamera` a robot runs (NOTES.md). What the
recording holds is known exactly (the renders are deterministic), so content, frame numbers,
timestamps, intrinsics and aligned depth can be compared with it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed (the realsense extra)")

from edgevla.cameras.image import fit_square
from edgevla.cameras.realsense.camera import (
    CameraConfigError,
    CameraHung,
    RealSenseCamera,
    RealSenseSettings,
    call_with_deadline,
)
from edgevla.cameras.realsense.clock import FrameClock
from edgevla.cameras.realsense.recording import (
    DEPTH_UNITS_M,
    MAX_DEPTH_M,
    StreamSpec,
    record_sim,
    sim_frames,
    sim_intrinsics,
)
from edgevla.runtime.devices import (
    CameraIntrinsics,
    CameraNotFound,
    CameraTimeout,
    IntrinsicsMismatch,
)

SPEC = StreamSpec(160, 120, 30)
SECONDS = 2.0


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of the scene camera with depth, 160x120 at 30 fps (written in real time)."""
    path = tmp_path_factory.mktemp("rs") / "scene.db3"
    record_sim(path, seconds=SECONDS, stream=SPEC, camera="scene", depth=True)
    return path


@pytest.fixture(scope="module")
def rendered() -> tuple[CameraIntrinsics, list[tuple[np.ndarray, np.ndarray]]]:
    """What the recording was made from, rendered again (rendering is deterministic)."""
    intrinsics, frames = sim_frames(seconds=SECONDS, stream=SPEC, camera="scene", depth=True)
    return intrinsics, list(frames)


def _camera(path: Path, **kw) -> RealSenseCamera:
    settings = {"width": SPEC.width, "height": SPEC.height, "fps": SPEC.fps, **kw}
    return RealSenseCamera(RealSenseSettings("scene", recording=str(path), **settings))


def _drain(cam: RealSenseCamera, timeout_s: float = 1.0) -> list:
    frames = []
    while True:
        try:
            frames.append(cam.read(timeout_s))
        except CameraTimeout:
            return frames


def test_a_simulated_recording_plays_through_the_real_pipeline(recording: Path, rendered) -> None:
    intrinsics, truth = rendered
    cam = _camera(recording, depth=True)
    cam.start()
    try:
        frames = _drain(cam)
        # As written, through the recording (which stores them as float32).
        got, want = cam.intrinsics, intrinsics
        assert (got.width, got.height, got.model) == (want.width, want.height, want.model)
        for key in ("fx", "fy", "ppx", "ppy"):
            assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-6), key
        assert cam.depth_scale_m == pytest.approx(DEPTH_UNITS_M)
    finally:
        cam.stop()
    count = round(SECONDS * SPEC.fps)
    numbers = [f.frame_number for f in frames]
    # Every frame from the first one delivered to the last of the recording, none lost; the
    # first few may go while the pipeline's syncer starts (seen: up to 3).
    assert numbers == list(range(numbers[0], count + 1)), numbers
    assert numbers[0] <= 5 and cam.frames_lost == 0
    for f in frames:
        rgb, depth = truth[f.frame_number - 1]
        assert np.array_equal(f.image, rgb), f.frame_number
        # z16 in millimetres, through rs.align (identity extrinsics): within half a unit of the
        # rendered depth, except where align's pixel-footprint mapping smears or leaves holes
        # along depth edges (seen: ~1 % of pixels). Beyond the range: the camera's 0.
        near = depth <= MAX_DEPTH_M
        assert near.mean() > 0.5
        exact = np.abs(f.depth_m - depth) <= DEPTH_UNITS_M / 2 + 1e-6
        assert exact[near].mean() > 0.97, exact[near].mean()
        assert (f.depth_m[~near] == 0).mean() > 0.97
    # Capture times keep the recorded 30 fps spacing, on the host clock, before arrival. The
    # spacing is exact except where a less-delayed frame lowers the tracked offset (a step of
    # the difference in transport delay, mostly among the first frames).
    step = np.diff([f.t_capture_s for f in frames])
    assert np.abs(step - 1 / SPEC.fps).max() < 2e-3, step
    assert np.median(np.abs(step - 1 / SPEC.fps)) < 1e-6
    assert all(f.t_capture_s <= f.t_arrival_s + 1e-9 for f in frames)
    assert all(f.t_arrival_s <= time.monotonic() for f in frames)
    assert cam.state == "closed"


def test_frames_are_fitted_to_the_policys_square_input(recording: Path, rendered) -> None:
    _, truth = rendered
    cam = _camera(recording, output_size=40)
    cam.start()
    try:
        frame = cam.read(2.0)
    finally:
        cam.stop()
    assert frame.image.shape == (40, 40, 3) and frame.image.dtype == np.uint8
    assert np.array_equal(frame.image, fit_square(truth[frame.frame_number - 1][0], 40))


def test_a_recording_that_ends_times_out_and_says_so(recording: Path) -> None:
    cam = _camera(recording)
    cam.start()
    try:
        frames = _drain(cam, timeout_s=1.5)
        assert frames
        with pytest.raises(CameraTimeout, match="recording ended"):
            cam.read(0.2)
        assert cam.state == "ended"
    finally:
        cam.stop()


def test_a_looped_recording_plays_on_and_its_clock_restarts(recording: Path) -> None:
    cam = _camera(recording, loop=True)
    cam.start()
    try:
        numbers = []
        deadline = time.monotonic() + SECONDS * 1.8
        while time.monotonic() < deadline:
            f = cam.read(1.0)
            numbers.append(f.frame_number)
            assert f.t_capture_s <= f.t_arrival_s + 1e-9
    finally:
        cam.stop()
    assert len(numbers) > SECONDS * SPEC.fps  # past the end
    assert numbers.index(max(numbers)) < len(numbers) - 1  # ... and from the start again
    assert cam._clock.resets >= 1


def test_a_stall_stops_frames_until_it_clears(recording: Path) -> None:
    """stall() pauses the playback inside librealsense: the real pipeline stops delivering."""
    cam = _camera(recording, stall_s=0.2)
    cam.start()
    try:
        before = cam.read(1.0).frame_number
        cam.stall()
        _drain(cam, timeout_s=0.3)  # whatever was in flight
        with pytest.raises(CameraTimeout, match="stalled"):
            cam.read(0.5)
        assert cam.stalls == 1
        cam.unstall()
        after = cam.read(1.0)
        assert after.frame_number > before and cam.state == "streaming"
    finally:
        cam.stop()


def test_a_missing_camera_is_named_by_its_serial() -> None:
    cam = RealSenseCamera(RealSenseSettings("wrist", serial="000111222333"))
    with pytest.raises(CameraNotFound, match=r"wrist.*serial 000111222333.*connected: "):
        cam.start()


def test_a_missing_recording_is_named(tmp_path: Path) -> None:
    with pytest.raises(CameraNotFound, match=r"no recording at .*absent\.db3"):
        _camera(tmp_path / "absent.db3").start()


def test_asking_a_recording_for_what_it_lacks_lists_what_it_holds(recording: Path) -> None:
    cam = _camera(recording, width=640, height=480)
    with pytest.raises(CameraConfigError, match=r"640x480.*the recording holds.*160x120"):
        cam.start()


def test_intrinsics_of_another_resolution_than_the_calibration_are_refused(
    recording: Path,
) -> None:
    calibrated = sim_intrinsics(55.0, 640, 480)
    cam = _camera(recording, calibrated=calibrated)
    with pytest.raises(IntrinsicsMismatch, match=r"streams 160x120.*calibration is for 640x480"):
        cam.start()
    assert cam._pipeline is None  # nothing left streaming


def test_a_hung_library_call_is_abandoned_at_its_deadline() -> None:
    release = threading.Event()
    start = time.monotonic()
    with pytest.raises(CameraHung, match="hardware_reset"):
        call_with_deadline(lambda: release.wait(10), 0.2, "hardware_reset")
    assert time.monotonic() - start < 5
    release.set()
    assert call_with_deadline(lambda: 7, 1.0, "quick") == 7
    with pytest.raises(RuntimeError, match="device gone"):
        call_with_deadline(lambda: (_ for _ in ()).throw(RuntimeError("device gone")), 1.0, "x")


# --------------------------------------------------------------------------- the frame clock


def test_host_stamped_frames_map_through_the_wall_clock_offset() -> None:
    clock = FrameClock(wall_minus_monotonic=lambda: 1000.0)
    # Captured at monotonic 50.000, wall 1050.000; arrived 12 ms later.
    t = clock.capture_time(1_050_000.0, "system_time", arrival_s=50.012)
    assert t == pytest.approx(50.0)
    assert clock.capture_time(1_050_100.0, "global_time", arrival_s=50.11) == pytest.approx(50.1)


def test_implausible_host_stamps_fall_back_to_the_tracked_offset(caplog) -> None:
    clock = FrameClock(wall_minus_monotonic=lambda: 1000.0)
    future = clock.capture_time(1_060_000.0, "system_time", arrival_s=50.0)  # 10 s ahead
    assert future <= 50.0
    assert "tracking their offset" in caplog.text
    recorded = FrameClock(trust_host_domains=False, wall_minus_monotonic=lambda: 1000.0)
    assert recorded.capture_time(1_050_000.0, "system_time", arrival_s=50.0) == 50.0


def test_the_hardware_clock_offset_is_the_least_delayed_recent_frame() -> None:
    clock = FrameClock(window=5)
    delays = [0.010, 0.004, 0.020, 0.006, 0.030]
    for k, delay in enumerate(delays):
        ts = 100.0 + k / 30  # device seconds
        arrival = 7.0 + k / 30 + delay
        t = clock.capture_time(ts * 1e3, "hardware_clock", arrival)
        # Offset so far: min delay seen → capture = arrival − (delay − min delay).
        assert t == pytest.approx(arrival - delay + min(delays[: k + 1]))
    # The window forgets the 4 ms frame after 5 frames; a drift of the device clock is followed.
    for k in range(5, 12):
        ts = 100.0 + k / 30
        t = clock.capture_time(ts * 1e3, "hardware_clock", 7.0 + k / 30 + 0.008)
    assert clock.offset_s == pytest.approx(7.0 - 100.0 + 0.008)
    assert t <= 7.0 + 11 / 30 + 0.008


def test_timestamps_that_go_back_restart_the_tracked_offset() -> None:
    clock = FrameClock()
    clock.capture_time(5000.0, "hardware_clock", 10.0)
    t = clock.capture_time(1000.0, "hardware_clock", 10.05)  # a looped recording, a reset
    assert t == pytest.approx(10.05) and clock.resets == 1


# --------------------------------------------------------------------------- fitting frames


def test_fit_square_crops_the_centre_and_averages_whole_blocks() -> None:
    image = np.zeros((6, 10, 3), np.uint8)
    image[:, 2:8] = np.arange(36, dtype=np.uint8).reshape(6, 6, 1) * 7  # the centre square
    out = fit_square(image, 3)
    expected = image[:, 2:8].reshape(3, 2, 3, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.array_equal(out, np.rint(expected).astype(np.uint8))
    assert fit_square(image, 6).base is None  # a copy, not a view into the driver's buffer
    depth = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    resized = fit_square(depth, 20)  # 48 → 20: not whole blocks, overlap-weighted
    assert resized.shape == (20, 20) and resized.dtype == np.float32
    assert depth[:, 8:56].min() <= resized.min() <= resized.max() <= depth[:, 8:56].max()
    # Area weights keep the mean of a linear ramp exactly.
    assert resized.mean() == pytest.approx(depth[:, 8:56].mean(), rel=1e-5)
    big = fit_square(image, 12)  # enlarging: bilinear, same range
    assert big.shape == (12, 12, 3) and big.max() <= image[:, 2:8].max()
    with pytest.raises(ValueError, match="> 0"):
        fit_square(image, 0)
