"""A loopback UR e-Series controller that the real ur_rtde library talks to.

It serves what `RTDEControlInterface`, `RTDEReceiveInterface` and `DashboardClient` need, on the
real ports of a controller (docs/dev/ur-rtde-emulator-notes.md has the protocol facts, with
line references into ur_rtde 1.6.5):

- **RTDE (30004)**: protocol and controller version (5.11.1: 500 Hz, the dashboard checks of
  PolyScope 5.6+), output and input recipes (ids handed out 1, 2, … per connection, as the
  client hard-codes them), start/pause, data packages streamed at the requested frequency.
- **Script port (30003)**: takes ur_rtde's control script (ends at a column-0 `end`); the
  "program" then runs: the register handshake of that script on `input_int_register_0` /
  `output_int_register_0` (1 ready, 2 done), servoJ re-applied every cycle, setWatchdog,
  servoStop, stopScript, triggerProtectiveStop.
- **Dashboard (29999)**: banner, version, serial number, remote control, stop, unlock protective
  stop (refused within 5 s of the stop, as on a real robot), power on, brake release, modes.

The arm is `edgevla.sim.robot.SimRobot` (the MuJoCo UR5e with its servo interpolator), so the
emulator's robot-side watchdog, protective stop and halts behave as the simulation's do. Faults
for tests and dry runs: `drop_connections`, `protective_stop`, `emergency_stop`,
`delay_packets`, `stall_data`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgevla.robots.ur import rtde_wire as wire
from edgevla.robots.ur.rtde_wire import Msg
from edgevla.runtime.devices import RobotState, SafetyMode
from edgevla.runtime.kinematics import UR5E, ForwardKinematics
from edgevla.sim.robot import SimRobot, UnlockRefused

log = logging.getLogger(__name__)

# ur_rtde's command ids (rtde.h RobotCommand::Type) that the emulated script implements.
CMD_NONE = 0
CMD_SPEEDJ = 9
CMD_SERVOJ = 11
CMD_SPEEDSTOP = 15
CMD_SERVOSTOP = 16
CMD_PROTECTIVE_STOP = 31
CMD_STOPL = 33
CMD_STOPJ = 34
CMD_SET_WATCHDOG = 35
CMD_STOP_SCRIPT = 255
# Ids the script treats as real time: applied every cycle, the ready flag stays 1.
REALTIME = frozenset({6, 9, 10, 11, 24, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71})
_STOPS = frozenset({CMD_SPEEDSTOP, CMD_SERVOSTOP, CMD_STOPL, CMD_STOPJ})

# RTDE runtime_state and robot_mode values.
RUNTIME_STOPPED, RUNTIME_PLAYING, RUNTIME_PAUSED = 1, 2, 4
ROBOT_MODE_POWER_OFF, ROBOT_MODE_IDLE, ROBOT_MODE_RUNNING = 3, 5, 7
# safety_status_bits: 0 normal, 2 protective stopped, 7 emergency stopped (ur_rtde's reading).
_BIT_NORMAL, _BIT_PROTECTIVE, _BIT_SAFEGUARD, _BIT_ESTOP = 0, 2, 4, 7


def rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """Axis times angle of a rotation matrix, robust at 180° (a tool pointing down)."""
    m = rotation
    # Shepperd's method: build the quaternion from its largest component.
    trace = np.trace(m)
    candidates = [trace, m[0, 0], m[1, 1], m[2, 2]]
    k = int(np.argmax(candidates))
    if k == 0:
        w = np.sqrt(1.0 + trace) / 2.0
        v = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (4.0 * w)
    else:
        i, j, c = (k - 1, k % 3, (k + 1) % 3)
        v = np.zeros(3)
        v[i] = np.sqrt(max(0.0, 1.0 + m[i, i] - m[j, j] - m[c, c])) / 2.0
        v[j] = (m[j, i] + m[i, j]) / (4.0 * v[i])
        v[c] = (m[c, i] + m[i, c]) / (4.0 * v[i])
        w = (m[c, j] - m[j, c]) / (4.0 * v[i])
    if w < 0:
        w, v = -w, -v
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        return np.zeros(3)
    return v / norm * 2.0 * np.arctan2(norm, w)


_ZEROS = {
    "DOUBLE": 0.0,
    "INT32": 0,
    "UINT32": 0,
    "UINT64": 0,
    "VECTOR3D": (0.0,) * 3,
    "VECTOR6D": (0.0,) * 6,
    "VECTOR6INT32": (0,) * 6,
}


@dataclass(frozen=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    rtde_port: int = 30004
    dashboard_port: int = 29999
    script_port: int = 30003
    # 5.11: 500 Hz, the dashboard's version and serial checks, no 5.23 register extensions.
    version: tuple[int, int, int, int] = (5, 11, 1, 0)
    serial_number: str = "20235500001"
    scene_seed: int = 0
    unlock_delay_s: float = 5.0


class _Session:
    """One RTDE client connection: its recipes and, once started, its output stream."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.output_names: list[str] = []
        self.output_struct: struct.Struct | None = None
        self.frequency_hz = 500.0
        self.inputs: dict[int, tuple[list[str], struct.Struct]] = {}
        self.started = threading.Event()
        self.closed = threading.Event()

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class URControllerEmulator:
    """Serves RTDE, the script port and the dashboard on loopback over a simulated UR5e."""

    def __init__(self, config: EmulatorConfig | None = None, robot: SimRobot | None = None):
        self.config = config or EmulatorConfig()
        self.robot = robot or SimRobot(
            self.config.scene_seed, unlock_delay_s=self.config.unlock_delay_s
        )
        self.period_s = 1.0 / 500.0
        self._fk = ForwardKinematics(UR5E)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._sessions: list[_Session] = []
        self._other_sockets: list[socket.socket] = []
        # The control script's registers (only the lower range is used by ur_rtde by default).
        self.in_int = [0] * 48
        self.in_double = [0.0] * 48
        self.out_int = [0] * 48
        self.out_double = [0.0] * 48
        self._script_running = False
        self._estop = False
        self._powered = True
        self._brakes_released = True
        self._last_cmd = -1
        self._stall = False
        self._delay_s = 0.0
        self._speed_scaling = 1.0  # the pendant's speed slider
        self._t0 = time.monotonic()
        self._state = RobotState()
        self.commands_seen: dict[int, int] = {}  # command id → packages carrying it
        # Host monotonic arrival time of every servoJ package (the jitter benchmark reads it).
        self.servo_arrivals: deque[float] = deque(maxlen=1 << 20)
        self.scripts_received = 0
        self.dashboard_log: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> URControllerEmulator:
        c = self.config
        for port, handler in (
            (c.dashboard_port, self._serve_dashboard),
            (c.script_port, self._serve_script),
            (c.rtde_port, self._serve_rtde),
        ):
            listener = socket.create_server((c.host, port), reuse_port=False)
            listener.settimeout(0.2)
            self._listeners.append(listener)
            self._spawn(self._accept_loop, listener, handler)
        log.info(
            "UR controller emulator on %s (RTDE %d, dashboard %d, script %d)",
            c.host,
            c.rtde_port,
            c.dashboard_port,
            c.script_port,
        )
        return self

    def stop(self) -> None:
        self._stop.set()
        for listener in self._listeners:
            listener.close()
        self.drop_connections()
        for t in self._threads:
            t.join(timeout=2.0)
        self.robot.close()

    def __enter__(self) -> URControllerEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=target.__name__)
        self._threads.append(t)
        t.start()

    def _accept_loop(self, listener: socket.socket, handler) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(handler, sock)

    # ------------------------------------------------------------------ fault injection

    def drop_connections(self) -> None:
        """Close every client connection (a cable pulled, a controller reboot)."""
        with self._lock:
            sessions, others = list(self._sessions), list(self._other_sockets)
            self._sessions.clear()
            self._other_sockets.clear()
        for s in sessions:
            s.close()
        for sock in others:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def protective_stop(self) -> None:
        """A protective stop (a collision, a limit): the arm halts and the program stops."""
        with self._lock:
            self.robot.inject_protective_stop()
            self._script_running = False

    def arm_q(self) -> list[float]:
        """The arm's joint positions now (for tests and the CLI)."""
        with self._lock:
            self._sync()
            return [float(x) for x in self._state.q]

    def emergency_stop(self, pressed: bool = True) -> None:
        """The e-stop button. Pressed: halt, program stopped, power off. Released: the arm
        stays powered off until the dashboard's `power on` and `brake release`."""
        with self._lock:
            if pressed:
                self.robot.inject_protective_stop()
                self._script_running = False
                self._powered = self._brakes_released = False
            self._estop = pressed

    def clear_faults(self) -> None:
        """Release the e-stop, power on, unlock a protective stop (once UR would allow it)."""
        with self._lock:
            self._estop = False
            self._powered = self._brakes_released = True
            self._stall, self._delay_s = False, 0.0
            self.robot.unlock_protective_stop()

    def reset_arm(self) -> None:
        """The arm back at rest at its home pose and the cubes at their seeded places (the
        start of a new dry run; a real cell would move there with moveJ)."""
        with self._lock:
            self.robot.reset()

    def set_speed_scaling(self, fraction: float) -> None:
        """The pendant's speed slider (reported only: the emulated arm is not slowed)."""
        self._speed_scaling = min(max(float(fraction), 0.0), 1.0)

    def delay_packets(self, seconds: float) -> None:
        """Hold back every outgoing data package by `seconds` (0: on time)."""
        self._delay_s = max(0.0, seconds)

    def stall_data(self, stalled: bool = True) -> None:
        """Stop (or resume) streaming data packages while keeping the connections open."""
        self._stall = stalled

    # ------------------------------------------------------------------ controller state

    @property
    def script_running(self) -> bool:
        return self._script_running

    def _sync(self) -> None:
        """Advance the arm to now and let the program stop where the arm stopped it."""
        self.robot.read_state(self._state)
        paused = self.robot.safety_mode is SafetyMode.SAFEGUARD_STOP
        if self._script_running and not self.robot.program_running and not paused:
            self._script_running = False  # watchdog expiry, NaN, protective stop

    def runtime_state(self) -> int:
        if not self._script_running:
            return RUNTIME_STOPPED
        if self.robot.safety_mode is SafetyMode.SAFEGUARD_STOP:
            return RUNTIME_PAUSED
        return RUNTIME_PLAYING

    def safety_mode(self) -> int:
        if self._estop:
            return int(SafetyMode.ROBOT_EMERGENCY_STOP)
        return int(self.robot.safety_mode)

    def _safety_bits(self) -> int:
        mode = self.safety_mode()
        if mode == SafetyMode.ROBOT_EMERGENCY_STOP:
            return 1 << _BIT_ESTOP
        if mode == SafetyMode.PROTECTIVE_STOP:
            return 1 << _BIT_PROTECTIVE
        if mode == SafetyMode.SAFEGUARD_STOP:
            return 1 << _BIT_SAFEGUARD
        return 1 << _BIT_NORMAL

    def _robot_mode(self) -> int:
        if not self._powered:
            return ROBOT_MODE_POWER_OFF
        return ROBOT_MODE_RUNNING if self._brakes_released else ROBOT_MODE_IDLE

    def _value(self, name: str):
        st = self._state
        if name == "timestamp":
            return time.monotonic() - self._t0
        if name in ("actual_q", "target_q"):
            return tuple(st.q)
        if name in ("actual_qd", "target_qd"):
            return tuple(st.qd)
        if name in ("actual_TCP_pose", "target_TCP_pose"):
            return self._tcp_pose(st.q)
        if name == "runtime_state":
            return self.runtime_state()
        if name == "safety_mode":
            return self.safety_mode()
        if name == "safety_status_bits":
            return self._safety_bits()
        if name == "robot_mode":
            return self._robot_mode()
        if name == "robot_status_bits":
            on = self._powered
            return int(on) | (int(self.runtime_state() == RUNTIME_PLAYING) << 1)
        if name == "speed_scaling" or name == "target_speed_fraction":
            return self._speed_scaling
        if name == "joint_mode":
            return (255,) * 6  # JOINT_RUNNING_MODE
        if name.startswith("output_int_register_"):
            return self.out_int[int(name.rsplit("_", 1)[1])]
        if name.startswith("output_double_register_"):
            return self.out_double[int(name.rsplit("_", 1)[1])]
        kind = wire.variable_type(name)
        if kind is None:
            raise KeyError(name)
        return _ZEROS[kind]  # a quantity the emulated arm does not model

    def _tcp_pose(self, q: np.ndarray) -> tuple[float, ...]:
        """Flange pose as UR reports it: position (m) and rotation vector (rad)."""
        pose = self._fk.flange_pose(q)
        return (*pose[:3, 3], *rotation_vector(pose[:3, :3]))

    def _package(self, session: _Session) -> bytes:
        assert session.output_struct is not None
        with self._lock:
            self._sync()
            values: list = []
            for name in session.output_names:
                value = self._value(name)
                values.extend(value if isinstance(value, tuple) else (value,))
        return wire.message(Msg.DATA, b"\x01" + session.output_struct.pack(*values))

    # ------------------------------------------------------------------ the control script

    def _start_script(self) -> None:
        with self._lock:
            if self._estop or not self._powered:
                log.warning("control script refused: the arm is not powered")
                return
            # The watchdog belongs to the script (rtde_set_watchdog): a new script starts without.
            self.robot.set_watchdog(0.0)
            self.robot.reupload_script()  # restarts the program unless protective-stopped
            if self.robot.safety_mode is SafetyMode.PROTECTIVE_STOP:
                log.warning("control script refused: protective stop active")
                return
            self._script_running = True
            self.out_int[0] = 1  # signal_ready
            self.scripts_received += 1

    def _on_input(self, names: list[str], values: tuple) -> None:
        """One input data package: registers updated, then one cycle of the script."""
        arrived = time.monotonic()
        i = 0
        for name in names:
            kind = wire.variable_type(name)
            width = 6 if kind in ("VECTOR6D", "VECTOR6INT32") else 3 if kind == "VECTOR3D" else 1
            value = values[i] if width == 1 else values[i : i + width]
            i += width
            if name.startswith("input_int_register_"):
                self.in_int[int(name.rsplit("_", 1)[1])] = int(value)
            elif name.startswith("input_double_register_"):
                self.in_double[int(name.rsplit("_", 1)[1])] = float(value)
        cmd = self.in_int[0]
        self.commands_seen[cmd] = self.commands_seen.get(cmd, 0) + 1
        if cmd == CMD_SERVOJ:
            self.servo_arrivals.append(arrived)
        with self._lock:
            self._sync()
            if not self._script_running:
                return
            # rtde_set_watchdog watches input_int_register_0: every package updates it.
            self.robot.kick_watchdog()
            if cmd == CMD_NONE:
                self.out_int[0] = 1
            elif cmd == CMD_STOP_SCRIPT:
                self.robot.stop()
                self._script_running = False
            elif cmd == CMD_SERVOJ:
                q = np.asarray(self.in_double[0:6], dtype=float)
                self.robot.servo(q, self.robot.world.gripper_opening())
            elif cmd in REALTIME:
                pass  # other real-time commands are not emulated; the arm holds
            elif self.out_int[0] == 1:
                self._execute(cmd)
                self.out_int[0] = 2  # signal_done_with_cmd, until the client writes 0
        self._last_cmd = cmd

    def _execute(self, cmd: int) -> None:
        if cmd == CMD_SET_WATCHDOG:
            self.robot.set_watchdog(self.in_double[0])
        elif cmd in _STOPS:
            self.robot.stop()
        elif cmd == CMD_PROTECTIVE_STOP:
            self.robot.inject_protective_stop()
            self._script_running = False
        else:
            log.warning("command %d is not emulated; reported done without motion", cmd)

    # ------------------------------------------------------------------ RTDE server

    def _serve_rtde(self, sock: socket.socket) -> None:
        session = _Session(sock)
        with self._lock:
            self._sessions.append(session)
        try:
            while not session.closed.is_set():
                kind, payload = wire.read_message(sock)
                self._rtde_message(session, kind, payload)
        except (ConnectionError, OSError):
            pass
        finally:
            session.close()

    def _rtde_message(self, session: _Session, kind: int, payload: bytes) -> None:
        if kind == Msg.PROTOCOL_VERSION:
            session.send(wire.message(Msg.PROTOCOL_VERSION, b"\x01"))
        elif kind == Msg.CONTROLLER_VERSION:
            session.send(
                wire.message(Msg.CONTROLLER_VERSION, struct.pack(">IIII", *self.config.version))
            )
        elif kind == Msg.SETUP_OUTPUTS:
            (session.frequency_hz,) = struct.unpack_from(">d", payload)
            names = [n for n in payload[8:].decode().split(",") if n]
            types = [wire.variable_type(n) or "NOT_FOUND" for n in names]
            if "NOT_FOUND" not in types:
                session.output_names = names
                session.output_struct = wire.recipe_struct(types)  # type: ignore[arg-type]
            session.send(wire.message(Msg.SETUP_OUTPUTS, b"\x01" + ",".join(types).encode()))
        elif kind == Msg.SETUP_INPUTS:
            names = [n for n in payload.decode().split(",") if n]
            types = [wire.variable_type(n) or "NOT_FOUND" for n in names]
            recipe = len(session.inputs) + 1
            if "NOT_FOUND" not in types:
                session.inputs[recipe] = (names, wire.recipe_struct(types))  # type: ignore[arg-type]
            session.send(wire.message(Msg.SETUP_INPUTS, bytes([recipe]) + ",".join(types).encode()))
        elif kind == Msg.START:
            session.send(wire.message(Msg.START, b"\x01"))
            if session.output_struct is not None and not session.started.is_set():
                session.started.set()
                self._spawn(self._stream, session)
        elif kind == Msg.PAUSE:
            session.started.clear()
            session.send(wire.message(Msg.PAUSE, b"\x01"))
        elif kind == Msg.DATA and payload:
            recipe = session.inputs.get(payload[0])
            if recipe is not None:
                names, fields = recipe
                self._on_input(names, fields.unpack_from(payload, 1))

    def _stream(self, session: _Session) -> None:
        """Data packages at the session's frequency on the monotonic clock."""
        period = 1.0 / session.frequency_hz
        next_t = time.monotonic()
        while session.started.is_set() and not session.closed.is_set() and not self._stop.is_set():
            next_t += period
            if not self._stall:
                try:
                    data = self._package(session)
                    if self._delay_s:
                        time.sleep(self._delay_s)
                    session.send(data)
                except OSError:
                    return
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.1:
                next_t = time.monotonic()  # far behind (a stall, a loaded host): don't burst

    # ------------------------------------------------------------------ script port

    def _serve_script(self, sock: socket.socket) -> None:
        with self._lock:
            self._other_sockets.append(sock)
        pending = b""
        try:
            while not self._stop.is_set():
                chunk = sock.recv(65536)
                if not chunk:
                    return
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()  # an incomplete last line waits for more bytes
                # Inner blocks are indented: a column-0 `end` closes the program's `def`.
                if any(line.rstrip(b"\r") == b"end" for line in lines):
                    self._start_script()
        except OSError:
            return

    # ------------------------------------------------------------------ dashboard

    def _dashboard_reply(self, command: str) -> str:
        c = self.config
        major, minor, bugfix, build = c.version
        if command == "PolyscopeVersion":
            return f"URSoftware {major}.{minor}.{bugfix}.{build} (emulated by edgevla)"
        if command == "get serial number":
            return c.serial_number
        if command == "is in remote control":
            return "true"
        if command == "stop":
            with self._lock:
                self.robot.stop()
                self._script_running = False
            return "Stopped"
        if command == "play":
            return "Starting program"
        if command == "pause":
            return "Pausing program"
        if command == "unlock protective stop":
            try:
                with self._lock:
                    self.robot.unlock_protective_stop()
            except UnlockRefused as exc:
                return f"Protective stop unlock refused: {exc}"
            return "Protective stop releasing"
        if command == "power on":
            self._powered = not self._estop
            return "Powering on"
        if command == "power off":
            self._powered = self._brakes_released = False
            return "Powering off"
        if command == "brake release":
            if self._powered:
                self._brakes_released = True
                with self._lock, contextlib.suppress(UnlockRefused):
                    self.robot.unlock_protective_stop()
            return "Brake releasing"
        if command == "close safety popup":
            return "closing safety popup"
        if command == "robotmode":
            names = {3: "POWER_OFF", 5: "IDLE", 7: "RUNNING"}
            return f"Robotmode: {names[self._robot_mode()]}"
        if command in ("safetymode", "safetystatus"):
            label = "Safetymode" if command == "safetymode" else "Safetystatus"
            return f"{label}: {SafetyMode(self.safety_mode()).name}"
        if command == "running":
            return f"Program running: {str(self.runtime_state() == RUNTIME_PLAYING).lower()}"
        if command == "programState":
            playing = self.runtime_state() == RUNTIME_PLAYING
            return f"{'PLAYING' if playing else 'STOPPED'} rtde_control"
        return f"could not understand: '{command}'"

    def _serve_dashboard(self, sock: socket.socket) -> None:
        with self._lock:
            self._other_sockets.append(sock)
        stream = sock.makefile("rwb", buffering=0)
        try:
            stream.write(b"Connected: Universal Robots Dashboard Server\n")
            for raw in stream:
                command = raw.decode(errors="replace").strip()
                self.dashboard_log.append(command)
                stream.write((self._dashboard_reply(command) + "\n").encode())
        except OSError:
            return


class EmulatorProcess:
    """The emulator in a child process, driven through a pipe.

    ur_rtde's Python bindings hold the GIL while they wait on a socket, so a client and the
    emulator cannot share a process: the emulator's threads would never run and the client
    would wait forever. Tests and benchmarks run it here; `call` invokes an emulator method
    (fault injection) or reads an attribute in the child and returns the result.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve_process, args=(child, config or EmulatorConfig()), daemon=True
        )

    def start(self) -> EmulatorProcess:
        self._process.start()
        if not self._conn.poll(60.0):
            self._process.kill()
            raise RuntimeError("the emulator process did not start within 60 s")
        ok, detail = self._conn.recv()
        if not ok:
            raise RuntimeError(f"the emulator process failed to start: {detail}")
        return self

    def call(self, name: str, *args: object):
        self._conn.send((name, args))
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"emulator {name}: {value}")
        return value

    def stop(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("__stop__", ()))
                self._conn.recv()
            except (EOFError, OSError):
                pass
            self._process.join(timeout=5.0)
        if self._process.is_alive():
            self._process.kill()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_process(conn, config: EmulatorConfig) -> None:
    """Child side of `EmulatorProcess`: run the emulator, answer calls until told to stop."""
    try:
        emulator = URControllerEmulator(config).start()
    except Exception as exc:  # report any start failure (a port in use) to the parent
        conn.send((False, repr(exc)))
        return
    conn.send((True, None))
    try:
        while True:
            name, args = conn.recv()
            if name == "__stop__":
                break
            try:
                value = getattr(emulator, name)
                if callable(value):
                    value = value(*args)
                elif isinstance(value, deque | dict):
                    value = list(value) if isinstance(value, deque) else dict(value)
                conn.send((True, value))
            except Exception as exc:
                conn.send((False, repr(exc)))
    finally:
        emulator.stop()
        conn.send((True, None))
