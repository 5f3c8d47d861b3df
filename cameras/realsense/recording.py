"""RealSense recordings (`.db3`): from a live camera, or from the simulated cell.

A simulated recording is written the way librealsense writes any: frames enter a
`rs.software_device` whose sensors carry real stream profiles and intrinsics, and `rs.recorder`
stores what they emit. Played back through `rs.pipeline`, it is indistinguishable from a
recording of a camera, which is how CI runs the RealSense driver with no camera attached.

The recorder stamps frames with the host time they reach it and playback paces them by those
stamps, so frames are pushed at the stream's rate in real time (rendering happens first, so a
slow renderer does not make the recording stutter). A 10 s recording takes 10 s to write.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevla.cameras.realsense.camera import connected_serials, require_pyrealsense2
from edgevla.runtime.devices import CameraIntrinsics, CameraNotFound

DEPTH_UNITS_M = 0.001  # z16 depth in millimetres, the D400 default
MAX_DEPTH_M = 10.0  # beyond a D400's range: recorded as 0, the camera's "no data"
SIM_SERIAL_PREFIX = "SIM"

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class StreamSpec:
    width: int = 640
    height: int = 480
    fps: int = 30


class SoftwareRecorder:
    """A librealsense software device with a colour (and optionally a depth) sensor whose
    frames `rs.recorder` writes to `path`. Use as a context manager."""

    def __init__(
        self,
        path: Path | str,
        intrinsics: CameraIntrinsics,
        fps: int,
        *,
        serial: str,
        name: str = "edgevla simulated camera",
        depth: bool = False,
    ) -> None:
        self._rs = rs = require_pyrealsense2()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.intrinsics = intrinsics
        self.fps = fps
        dev = rs.software_device()
        dev.register_info(rs.camera_info.serial_number, serial)
        dev.register_info(rs.camera_info.name, name)
        self._device = dev
        self._color_sensor = dev.add_sensor("RGB Camera")
        self._color = self._color_sensor.add_video_stream(
            self._stream(rs.stream.color, rs.format.rgb8, 3, uid=0)
        )
        self._sensors = [(self._color_sensor, self._color)]
        self._depth = None
        if depth:
            depth_sensor = dev.add_sensor("Stereo Module")
            depth_sensor.add_read_only_option(rs.option.depth_units, DEPTH_UNITS_M)
            self._depth = depth_sensor.add_video_stream(
                self._stream(rs.stream.depth, rs.format.z16, 2, uid=1)
            )
            # Same optics for both: rendered depth is already aligned (identity extrinsics).
            ext = rs.extrinsics()
            ext.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            ext.translation = [0.0, 0.0, 0.0]
            self._depth.register_extrinsics_to(self._color, ext)
            self._sensors.append((depth_sensor, self._depth))
        self._recorder = rs.recorder(str(self.path), dev)
        self._queues = []
        for sensor, profile in self._sensors:
            queue = rs.frame_queue(4)
            sensor.open(profile)
            sensor.start(queue)
            self._queues.append(queue)
        self.frames = 0

    def _stream(self, kind: Any, fmt: Any, bpp: int, uid: int) -> Any:
        rs, i = self._rs, self.intrinsics
        intr = rs.intrinsics()
        intr.width, intr.height = i.width, i.height
        intr.fx, intr.fy, intr.ppx, intr.ppy = i.fx, i.fy, i.ppx, i.ppy
        intr.model = rs.distortion.none
        intr.coeffs = list(i.coeffs)
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = kind, 0, uid
        stream.width, stream.height, stream.fps = i.width, i.height, self.fps
        stream.bpp, stream.fmt, stream.intrinsics = bpp, fmt, intr
        return stream

    def write(
        self, rgb: np.ndarray, frame_number: int, timestamp_ms: float, depth_m: np.ndarray | None
    ) -> None:
        rs = self._rs
        h, w = self.intrinsics.height, self.intrinsics.width
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"colour must be uint8 [{h}, {w}, 3], not {rgb.dtype} {rgb.shape}")
        frame = rs.software_video_frame()
        frame.pixels = np.ascontiguousarray(rgb)
        frame.stride, frame.bpp = w * 3, 3
        frame.timestamp, frame.domain = timestamp_ms, rs.timestamp_domain.hardware_clock
        frame.frame_number = frame_number
        frame.profile = self._color.as_video_stream_profile()
        self._color_sensor.on_video_frame(frame)
        if self._depth is not None:
            if depth_m is None:
                raise ValueError("this recording has a depth stream: pass depth_m")
            in_range = (depth_m > 0) & (depth_m <= MAX_DEPTH_M)
            z16 = np.where(in_range, np.rint(depth_m / DEPTH_UNITS_M), 0).astype(np.uint16)
            dframe = rs.software_video_frame()
            dframe.pixels = np.ascontiguousarray(z16)
            dframe.stride, dframe.bpp = w * 2, 2
            dframe.timestamp, dframe.domain = timestamp_ms, rs.timestamp_domain.hardware_clock
            dframe.frame_number = frame_number
            dframe.depth_units = DEPTH_UNITS_M
            dframe.profile = self._depth.as_video_stream_profile()
            self._sensors[1][0].on_video_frame(dframe)
        self.frames += 1

    def close(self) -> None:
        for sensor, _ in self._sensors:
            sensor.stop()
            sensor.close()
        # The file is complete only once the recorder is released.
        del self._recorder
        self._queues.clear()

    def __enter__(self) -> SoftwareRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sim_intrinsics(fovy_deg: float, width: int, height: int) -> CameraIntrinsics:
    """MuJoCo's camera: a symmetric frustum of vertical field of view `fovy`, square pixels,
    principal point at the image centre (pixel-centre convention: (W−1)/2, (H−1)/2)."""
    fy = (height / 2) / math.tan(math.radians(fovy_deg) / 2)
    return CameraIntrinsics(width, height, fy, fy, (width - 1) / 2, (height - 1) / 2)


def sim_frames(
    *,
    seconds: float,
    stream: StreamSpec,
    camera: str = "scene",
    episode_seed: int = 0,
    depth: bool = False,
) -> tuple[CameraIntrinsics, Iterator[tuple[np.ndarray, np.ndarray | None]]]:
    """The intrinsics and the frames of one camera watching the scripted expert do the touch
    task of `episode_seed` (rendered at the stream's resolution, one expert step per frame)."""
    # isort: off
    # edgevla.sim first: it picks a headless GL backend before mujoco is imported.
    from edgevla.sim.expert import TouchExpert
    from edgevla.sim.tasks import touch_episode
    from edgevla.sim.world import SimWorld
    import mujoco

    # isort: on

    episode = touch_episode(episode_seed)
    world = SimWorld(episode.scene_seed, image_size=max(stream.width, stream.height))
    cam_id = mujoco.mj_name2id(world.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam_id < 0:
        raise CameraNotFound(f"the simulated scene has no camera {camera!r} (scene, wrist)")
    intrinsics = sim_intrinsics(float(world.model.cam_fovy[cam_id]), stream.width, stream.height)
    count = max(1, round(seconds * stream.fps))

    def frames() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        world.reset(episode.initial_q, episode.initial_gripper)
        expert = TouchExpert(
            world.cube_positions()[episode.target], 2, 1 / stream.fps, model=world.robot
        )
        colour = mujoco.Renderer(world.model, stream.height, stream.width)
        ranger = mujoco.Renderer(world.model, stream.height, stream.width) if depth else None
        if ranger is not None:
            ranger.enable_depth_rendering()
        try:
            for _ in range(count):
                colour.update_scene(world.data, camera=camera)
                rgb = colour.render().copy()
                z = None
                if ranger is not None:
                    ranger.update_scene(world.data, camera=camera)
                    z = ranger.render().astype(np.float32)
                yield rgb, z
                world.q[:] = expert.plan(world.q.copy())[1, :6]
                mujoco.mj_forward(world.model, world.data)
        finally:
            colour.close()
            if ranger is not None:
                ranger.close()

    return intrinsics, frames()


def record_sim(
    path: Path | str,
    *,
    seconds: float,
    stream: StreamSpec = StreamSpec(),
    camera: str = "scene",
    episode_seed: int = 0,
    depth: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write a recording of the simulated `camera`; returns a summary (frames, serial, ...)."""
    intrinsics, frames = sim_frames(
        seconds=seconds, stream=stream, camera=camera, episode_seed=episode_seed, depth=depth
    )
    count = max(1, round(seconds * stream.fps))
    rendered = []
    for k, item in enumerate(frames):
        rendered.append(item)
        if progress is not None:
            progress("render", k + 1, count)
    serial = f"{SIM_SERIAL_PREFIX}-{camera}-{episode_seed}"
    period = 1.0 / stream.fps
    with SoftwareRecorder(path, intrinsics, stream.fps, serial=serial, depth=depth) as rec:
        t0 = time.monotonic()
        for k, (rgb, z) in enumerate(rendered):
            due = t0 + k * period
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            rec.write(rgb, k + 1, 1000.0 + k * period * 1e3, z)
            if progress is not None:
                progress("record", k + 1, count)
    return {
        "path": str(path),
        "source": f"simulated camera {camera!r}, episode {episode_seed}",
        "serial": serial,
        "frames": count,
        "width": stream.width,
        "height": stream.height,
        "fps": stream.fps,
        "depth": depth,
    }


def record_device(
    path: Path | str,
    serial: str,
    *,
    seconds: float,
    stream: StreamSpec = StreamSpec(),
    depth: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Record a live RealSense (colour, and depth if asked) for `seconds`."""
    rs = require_pyrealsense2()
    serials = connected_serials(rs)
    if serial not in serials:
        raise CameraNotFound(
            f"no RealSense with serial {serial} is connected"
            f" (connected: {', '.join(serials) or 'none'})"
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    config = rs.config()
    config.enable_device(serial)
    w, h, fps = stream.width, stream.height, stream.fps
    config.enable_stream(rs.stream.color, w, h, rs.format.rgb8, fps)
    if depth:
        config.enable_stream(rs.stream.depth, w, h, rs.format.z16, fps)
    config.enable_record_to_file(str(path))
    pipeline = rs.pipeline()
    pipeline.start(config)
    frames = 0
    total = max(1, round(seconds * stream.fps))
    try:
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            ok, _ = pipeline.try_wait_for_frames(1000)
            frames += int(ok)
            if progress is not None:
                progress("record", min(frames, total), total)
    finally:
        pipeline.stop()
    return {
        "path": str(path),
        "source": f"RealSense {serial}",
        "serial": serial,
        "frames": frames,
        "width": stream.width,
        "height": stream.height,
        "fps": stream.fps,
        "depth": depth,
    }
