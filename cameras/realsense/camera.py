"""`RealSenseCamera`: the runtime's `Camera` protocol over a RealSense, live or recorded.

One capture thread owns the `rs.pipeline`: it waits for framesets, stamps each frame with its
arrival time and its capture time on the host monotonic clock (`FrameClock`), counts frames lost
from gaps in the frame numbers, and hands the newest frame to `read()`. A reader that falls
behind gets the newest frame, as with a RealSense whose queue holds one.

When no frame comes for `stall_s` the camera is stalled: `read()` times out, naming why, and the
policy process's frames go stale, which is the control process's camera trip. A live camera is
then recovered: the pipeline is stopped, the device reset (USB re-enumeration) and found again
by its serial, and the pipeline restarted, each step under the attempt's deadline. librealsense
calls can hang (NOTES.md: `hardware_reset`), so every one of them runs in a helper thread that is
abandoned, not joined, when its deadline passes; the next attempt builds new objects. A recording
that ends is not recovered: it stays ended unless `loop` is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edgevla.cameras.image import fit_square
from edgevla.cameras.realsense.clock import FrameClock
from edgevla.runtime.devices import CameraIntrinsics, CameraNotFound, CameraTimeout, Frame
from edgevla.runtime.errors import EdgeVlaError

log = logging.getLogger(__name__)

T = TypeVar("T")


class CameraHung(EdgeVlaError):
    """A librealsense call did not return within its deadline (its thread was abandoned)."""


class RealSenseUnavailable(EdgeVlaError):
    """pyrealsense2 (or the libusb it links) is not installed."""


def require_pyrealsense2() -> Any:
    """The pyrealsense2 module, or an error that says how to install it."""
    try:
        import pyrealsense2
    except ImportError as exc:
        raise RealSenseUnavailable(
            f"RealSense support needs pyrealsense2 ({exc}): pip install 'edgevla[realsense]',"
            " and on Debian/Ubuntu apt-get install libusb-1.0-0 (Jetson: build librealsense"
            " with its Python bindings, docs/realsense.md)"
        ) from exc
    return pyrealsense2


class CameraConfigError(EdgeVlaError):
    """The device or recording cannot stream what was asked (resolution, rate, streams)."""


@dataclass(frozen=True)
class RealSenseSettings:
    """One camera. Exactly one of `serial` (a live device) and `recording` (a .db3 file)."""

    name: str
    serial: str = ""
    recording: str = ""
    width: int = 640
    height: int = 480
    fps: int = 30
    depth: bool = False  # also stream depth (z16), aligned to the colour image
    output_size: int | None = None  # square crop and resize for the policy; None: as streamed
    loop: bool = False  # replay a recording from its start when it ends
    stall_s: float = 0.5
    reconnect_deadline_s: float = 10.0
    hardware_reset: bool = True
    calibrated: CameraIntrinsics | None = None  # refuse to stream at another resolution

    def __post_init__(self) -> None:
        if bool(self.serial) == bool(self.recording):
            raise ValueError(f"camera {self.name!r}: give a serial or a recording, not both")

    @property
    def source(self) -> str:
        return f"serial {self.serial}" if self.serial else f"recording {self.recording}"


def call_with_deadline(fn: Callable[[], T], deadline_s: float, what: str) -> T:
    """Run `fn` in a daemon thread; raise CameraHung if it is not done in `deadline_s`.

    The thread is abandoned, not killed (Python cannot): whatever librealsense holds stays held,
    and the caller must not touch the objects `fn` was using again.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"rs-{what}", daemon=True)
    thread.start()
    thread.join(max(deadline_s, 0.0))
    if thread.is_alive():
        raise CameraHung(f"{what}: no return within {deadline_s:.1f} s; abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


def connected_serials(rs: Any) -> list[str]:
    """Serial numbers of the RealSense devices librealsense can see now."""
    serials = []
    for dev in rs.context().query_devices():
        try:
            serials.append(dev.get_info(rs.camera_info.serial_number))
        except RuntimeError:  # a device in recovery mode, or one going away
            continue
    return serials


def _intrinsics(profile: Any) -> CameraIntrinsics:
    i = profile.as_video_stream_profile().get_intrinsics()
    return CameraIntrinsics(
        width=int(i.width),
        height=int(i.height),
        fx=float(i.fx),
        fy=float(i.fy),
        ppx=float(i.ppx),
        ppy=float(i.ppy),
        model=str(i.model).rsplit(".", 1)[-1],
        coeffs=tuple(float(c) for c in i.coeffs),
    )


class RealSenseCamera:
    """The `Camera` protocol for one RealSense (or one recording of one)."""

    def __init__(self, settings: RealSenseSettings) -> None:
        # Imported here, so that importing edgevla never needs librealsense.
        self._rs = require_pyrealsense2()
        self.settings = settings
        self.name = settings.name
        self.intrinsics: CameraIntrinsics | None = None
        self.depth_scale_m = 0.0
        self._pipeline: Any = None
        self._align: Any = None
        self._playback: Any = None
        self._clock = FrameClock(trust_host_domains=not settings.recording, name=settings.name)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._sequence = 0  # frames handed over since start; read() returns each at most once
        self._read_sequence = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._discard = False  # stall(): drop every frame (a live camera)
        self._last_number = -1
        self._last_depth_number = -1
        self._last_frame_t = 0.0
        self.state = "closed"  # closed | streaming | stalled | recovering | ended | failed
        self.detail = ""
        self.frames = 0
        self.frames_lost = 0  # gaps in the device's frame numbers
        self.stalls = 0
        self.recoveries = 0

    # ------------------------------------------------------------------ Camera protocol

    def start(self) -> None:
        """Open the device or recording and start capturing; raises CameraNotFound,
        CameraConfigError or IntrinsicsMismatch (before any thread runs)."""
        if self._thread is not None:
            return
        s = self.settings
        self._open(time.monotonic() + s.reconnect_deadline_s)
        self._stop.clear()
        self._last_frame_t = time.monotonic()
        self._thread = threading.Thread(target=self._capture, name=f"rs-{self.name}", daemon=True)
        self._thread.start()

    def read(self, timeout_s: float) -> Frame:
        """The newest frame not yet returned; raises CameraTimeout after `timeout_s`."""
        if self._thread is None:
            self.start()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._cond:
            while self._sequence == self._read_sequence:
                left = deadline - time.monotonic()
                if left <= 0:
                    why = f" ({self.state}: {self.detail})" if self.detail else f" ({self.state})"
                    raise CameraTimeout(
                        f"camera {self.name!r} ({self.settings.source}): no frame within"
                        f" {timeout_s:g} s{why}"
                    )
                self._cond.wait(left)
            self._read_sequence = self._sequence
            assert self._latest is not None
            return self._latest

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.stall_s + 1.0)
            if self._thread.is_alive():
                log.error("camera %r: capture thread did not stop; abandoning it", self.name)
            self._thread = None
        self._close_pipeline(self.settings.reconnect_deadline_s)
        self.state = "closed"

    # ------------------------------------------------------------------ fault injection

    def stall(self) -> None:
        """Frames stop: a recording is paused in librealsense, a live camera's are dropped."""
        if self._playback is not None:
            self._playback.pause()
        else:
            self._discard = True

    def unstall(self) -> None:
        if self._playback is not None:
            self._playback.resume()
        self._discard = False

    # ------------------------------------------------------------------ opening

    def _open(self, deadline: float) -> None:
        rs, s = self._rs, self.settings
        config = rs.config()
        if s.recording:
            path = Path(s.recording)
            if not path.is_file():
                raise CameraNotFound(f"camera {self.name!r}: no recording at {path}")
            config.enable_device_from_file(str(path), repeat_playback=s.loop)
        else:
            serials = call_with_deadline(
                lambda: connected_serials(rs), deadline - time.monotonic(), "query_devices"
            )
            if s.serial not in serials:
                raise CameraNotFound(
                    f"camera {self.name!r}: no RealSense with serial {s.serial} is connected"
                    f" (connected: {', '.join(serials) or 'none'}); check the cable, the udev"
                    " rules and `edgevla camera list`"
                )
            config.enable_device(s.serial)
        config.enable_stream(rs.stream.color, s.width, s.height, rs.format.rgb8, s.fps)
        if s.depth:
            config.enable_stream(rs.stream.depth, s.width, s.height, rs.format.z16, s.fps)
        pipeline = rs.pipeline()
        try:
            profile = call_with_deadline(
                lambda: pipeline.start(config), deadline - time.monotonic(), "pipeline.start"
            )
        except RuntimeError as exc:
            raise CameraConfigError(
                f"camera {self.name!r} ({s.source}) cannot stream colour {s.width}x{s.height}"
                f" rgb8 at {s.fps} fps{' with depth' if s.depth else ''}: {exc}" + self._offered(s)
            ) from exc
        device = profile.get_device()
        self._playback = device.as_playback() if device.is_playback() else None
        self.intrinsics = _intrinsics(profile.get_stream(rs.stream.color))
        if s.calibrated is not None:
            try:
                self.intrinsics.check_resolution(
                    s.calibrated.width, s.calibrated.height, f"camera {self.name!r}"
                )
            except Exception:
                call_with_deadline(pipeline.stop, s.reconnect_deadline_s, "pipeline.stop")
                raise
        if s.depth:
            self.depth_scale_m = float(device.first_depth_sensor().get_depth_scale())
            self._align = rs.align(rs.stream.color)
        self._pipeline = pipeline
        self.state, self.detail = "streaming", ""
        log.info(
            "camera %r: %s, colour %dx%d at %d fps%s",
            self.name,
            s.source,
            s.width,
            s.height,
            s.fps,
            ", depth aligned" if s.depth else "",
        )

    def _offered(self, s: RealSenseSettings) -> str:
        """What a recording holds, for the error message (live devices: rs-enumerate-devices)."""
        if not s.recording:
            return "; `rs-enumerate-devices` lists what the device offers"
        try:
            dev = self._rs.context().load_device(s.recording)
            profiles = sorted(
                {
                    f"{p.stream_name()} {v.width()}x{v.height()} {p.format()} @{p.fps()}"
                    for sensor in dev.query_sensors()
                    for p in sensor.get_stream_profiles()
                    if (v := p.as_video_stream_profile())
                }
            )
            return f"; the recording holds {profiles}"
        except Exception:  # the message is a courtesy; the error above is the point
            return ""

    def _close_pipeline(self, deadline_s: float) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        try:
            call_with_deadline(pipeline.stop, deadline_s, "pipeline.stop")
        except CameraHung as exc:
            log.error("camera %r: %s", self.name, exc)
        except RuntimeError:
            pass  # not started, or the device is gone: nothing left to stop

    # ------------------------------------------------------------------ capture thread

    def _capture(self) -> None:
        s = self.settings
        while not self._stop.is_set():
            if self._pipeline is None:
                self._recover()
                continue
            try:
                ok, frames = self._pipeline.try_wait_for_frames(int(s.stall_s * 1e3))
            except RuntimeError as exc:  # the device went away mid-wait
                ok, frames = False, None
                self.detail = str(exc)
            now = time.monotonic()
            if ok and not self._discard:
                self._deliver(frames, now)
                continue
            if now - self._last_frame_t < s.stall_s:
                continue
            self._stalled(now)

    def _deliver(self, frames: Any, arrival: float) -> None:
        color = frames.get_color_frame()
        if not color:
            return
        number = int(color.get_frame_number())
        depth_number = -1
        if self._align is not None:
            raw_depth = frames.get_depth_frame()
            if not raw_depth:
                return
            depth_number = int(raw_depth.get_frame_number())
            # The syncer also emits a new colour frame with the last depth frame, then the same
            # colour frame with the new depth: only a pair of two new frames is one observation.
            if depth_number == self._last_depth_number:
                return
        if number == self._last_number:
            return
        if self._last_number >= 0 and number > self._last_number + 1:
            self.frames_lost += number - self._last_number - 1
        self._last_number, self._last_depth_number = number, depth_number
        if self._align is not None:
            frames = self._align.process(frames)
            color = frames.get_color_frame()
        domain = str(color.get_frame_timestamp_domain()).rsplit(".", 1)[-1]
        t_capture = self._clock.capture_time(color.get_timestamp(), domain, arrival)
        # Copies: the frame's memory goes back to librealsense's pool when `frames` is released.
        image = np.array(color.get_data(), dtype=np.uint8, copy=True)
        depth = None
        if self._align is not None:
            d = frames.get_depth_frame()
            if d:
                depth = np.asarray(d.get_data(), dtype=np.float32) * self.depth_scale_m
        size = self.settings.output_size
        if size is not None:
            image = fit_square(image, size)
            depth = None if depth is None else fit_square(depth, size)
        frame = Frame(image, number, t_capture, arrival, depth)
        if self.state != "streaming":
            log.info("camera %r: frames again (frame %d)", self.name, number)
            self.state, self.detail = "streaming", ""
        self._last_frame_t = arrival
        self.frames += 1
        with self._cond:
            self._latest = frame
            self._sequence += 1
            self._cond.notify_all()

    def _stalled(self, now: float) -> None:
        if self._playback is not None:
            status = str(self._playback.current_status()).rsplit(".", 1)[-1]
            if status == "stopped":
                if self.state != "ended":
                    log.warning("camera %r: the recording ended", self.name)
                    self.state, self.detail = "ended", "the recording ended"
                self._stop.wait(self.settings.stall_s)
                return
        if self.state == "streaming":
            self.stalls += 1
            log.warning(
                "camera %r (%s): no frame for %.2f s",
                self.name,
                self.settings.source,
                now - self._last_frame_t,
            )
            self.state = "stalled"
            self.detail = self.detail or f"no frame since {now - self._last_frame_t:.2f} s"
        if self._playback is None and not self._discard:
            self._close_pipeline(self.settings.reconnect_deadline_s)

    def _recover(self) -> None:
        """One recovery attempt of a live camera: reset it, find it again, restart streaming."""
        s = self.settings
        self.state = "recovering"
        deadline = time.monotonic() + s.reconnect_deadline_s
        try:
            if s.hardware_reset:
                self._hardware_reset(deadline)
            while s.serial not in call_with_deadline(
                lambda: connected_serials(self._rs), deadline - time.monotonic(), "query_devices"
            ):
                if time.monotonic() > deadline or self._stop.wait(0.2):
                    raise CameraNotFound(f"serial {s.serial} did not come back")
            self._open(deadline)
            self.recoveries += 1
            self._last_frame_t = time.monotonic()
            log.warning("camera %r: recovered (%d so far)", self.name, self.recoveries)
        except (EdgeVlaError, RuntimeError) as exc:
            self.state, self.detail = "failed", f"recovery failed: {exc}"
            log.error("camera %r: %s; trying again", self.name, self.detail)
            self._stop.wait(min(2.0, s.stall_s * 4))

    def _hardware_reset(self, deadline: float) -> None:
        rs, serial = self._rs, self.settings.serial
        for dev in rs.context().query_devices():
            try:
                if dev.get_info(rs.camera_info.serial_number) != serial:
                    continue
            except RuntimeError:
                continue
            call_with_deadline(dev.hardware_reset, deadline - time.monotonic(), "hardware_reset")
            # The device leaves the bus and enumerates again; give it that time before looking.
            self._stop.wait(min(2.0, max(0.0, deadline - time.monotonic())))
            return
