"""A simulated camera behind the `Camera` protocol: renders a mirror of the robot's scene.

Each camera owns a copy of the scene's model and a `mujoco.Renderer`; per frame it pulls the
scene's qpos through `world_state_source` (`SimRobot.world_state` in-process, or a reader of
shared memory in another process), poses its mirror and renders. Frames are paced like a sensor:
frame k exists at `t_start + k / fps` on the host monotonic clock whether or not anyone reads it,
so a reader that falls behind gets the newest frame and sees the frame number jump, as with a
RealSense whose queue holds one frame.

Rendering needs a GL backend, which MuJoCo picks from MUJOCO_GL when it is first imported:
`edgevla.sim/__init__.py` defaults it to OSMesa (CPU) before any module here imports mujoco.
`stop()` must be called: a Renderer freed at interpreter shutdown prints a ctypes traceback under
OSMesa.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

import mujoco
import numpy as np

from edgevla.runtime.devices import CameraTimeout, Frame
from edgevla.runtime.kinematics import UR5E, RobotModel
from edgevla.sim.scene import SCENE_CAMERA, WRIST_CAMERA
from edgevla.sim.tasks import Episode
from edgevla.sim.world import SimWorld


class SimCamera:
    """The `Camera` protocol: one of the scene's cameras ("scene" or "wrist"), paced at `fps`."""

    def __init__(
        self,
        name: str,
        camera: str,
        world_state_source: Callable[[np.ndarray], float],
        fps: float = 30.0,
        image_size: int = 96,
        seed: int = 0,
        *,
        robot: RobotModel = UR5E,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.camera = camera
        self.fps = fps
        self.image_size = image_size
        self._source = world_state_source
        self._clock = clock
        self._sleep = sleep
        self._mirror = SimWorld(seed, image_size, robot)
        if mujoco.mj_name2id(self._mirror.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"the scene has no camera {camera!r}")
        self._state = np.zeros(self._mirror.state_size)
        self._renderer: mujoco.Renderer | None = None
        self._t_start_s = 0.0
        self._last_frame = -1
        self._drop = 0
        self._stalled = False
        self.last_world_time_s = 0.0  # simulation time of the scene in the latest frame

    @property
    def t_start_s(self) -> float:
        """Host time of frame 0; frame k is due at t_start_s + k / fps."""
        return self._t_start_s

    def start(self) -> None:
        if self._renderer is None:
            _require_headless_gl(self.name)
            try:
                self._renderer = mujoco.Renderer(
                    self._mirror.model, self.image_size, self.image_size
                )
            except Exception as err:
                raise RuntimeError(
                    f"camera {self.name!r} cannot render with MUJOCO_GL="
                    f"{os.environ.get('MUJOCO_GL')!r}"
                ) from err
            # The first render uploads the scene to the GL context (~50 ms here, frames late at
            # 30 fps); doing it here keeps frame 0 on time.
            self._renderer.update_scene(self._mirror.data, camera=self.camera)
            self._renderer.render()
        self._t_start_s = self._clock()
        self._last_frame = -1
        self._drop = 0

    def read(self, timeout_s: float) -> Frame:
        """Wait for the next frame and render it; raises CameraTimeout after `timeout_s`.

        Starts the camera on first use.
        """
        if self._renderer is None:
            self.start()
        now = self._clock()
        if self._stalled:
            self._sleep(max(timeout_s, 0.0))
            raise CameraTimeout(f"camera {self.name!r}: no frame within {timeout_s:g} s (stalled)")
        newest = math.floor((now - self._t_start_s) * self.fps)
        frame = max(self._last_frame + 1 + self._drop, newest)
        t_frame = self._t_start_s + frame / self.fps
        if t_frame - now > timeout_s:
            self._sleep(max(timeout_s, 0.0))
            raise CameraTimeout(f"camera {self.name!r}: no frame within {timeout_s:g} s")
        if t_frame > now:
            self._sleep(t_frame - now)
        self._drop = 0
        return self._render(frame)

    def stop(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- fault injection ------------------------------------------------------------------------

    def stall(self) -> None:
        """Frames stop arriving: `read` times out until `unstall`."""
        self._stalled = True

    def unstall(self) -> None:
        self._stalled = False

    def drop_next(self, k: int) -> None:
        """Lose the next `k` frames: the frame after them arrives with its number k higher."""
        self._drop += k

    # --- internals ------------------------------------------------------------------------------

    def _render(self, frame: int) -> Frame:
        assert self._renderer is not None
        self.last_world_time_s = self._source(self._state)
        self._mirror.set_world_state(self._state)
        self._renderer.update_scene(self._mirror.data, camera=self.camera)
        image = self._renderer.render()
        t_capture = self._clock()
        self._last_frame = frame
        return Frame(image=image, frame_number=frame, t_capture_s=t_capture, t_arrival_s=t_capture)

    def __enter__(self) -> SimCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _require_headless_gl(camera: str) -> None:
    """Refuse early where GLFW would abort the whole process: no display, and MuJoCo chose GLFW
    because it was imported before MUJOCO_GL was set."""
    backend = getattr(getattr(mujoco, "GLContext", None), "__module__", "")
    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if backend == "mujoco.glfw" and sys.platform.startswith("linux") and headless:
        raise RuntimeError(
            f"camera {camera!r} cannot render: mujoco was imported before MUJOCO_GL was set and"
            " chose GLFW, which needs a display. Import edgevla.sim before mujoco, or set"
            " MUJOCO_GL=osmesa (CPU) or egl (GPU) in the environment."
        )


def start_frames(
    episode: Episode, image_size: int, cameras: tuple[str, ...] = (SCENE_CAMERA, WRIST_CAMERA)
) -> np.ndarray:
    """uint8 [cameras, S, S, 3]: the views at the start of a touch episode, as a policy's first
    observation sees them (for probes, tests and `edgevla demo`; episodes use `SimCamera`)."""
    _require_headless_gl(cameras[0])
    world = SimWorld(seed=episode.scene_seed, image_size=image_size)
    world.reset(episode.initial_q, episode.initial_gripper)
    frames = []
    with mujoco.Renderer(world.model, image_size, image_size) as renderer:
        for camera in cameras:
            renderer.update_scene(world.data, camera=camera)
            frames.append(renderer.render().copy())
    return np.stack(frames)
