"""`edgevla service install`: the unit, its environment file, the runtime config, the system user
and the udev rules, rendered for this machine and written under a root ("/" or an image).

Generated files (unit, sysusers snippet, udev rules) are rewritten on every install; the files
an operator edits (the environment file, the runtime config) are written once and kept after.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import msgspec

from edgevla.runtime.config import RuntimeConfig, load_config, to_toml
from edgevla.runtime.errors import EdgeVlaError

UNIT = Path("/etc/systemd/system/edgevla.service")
ENV_FILE = Path("/etc/edgevla/edgevla.env")
CONFIG = Path("/etc/edgevla/cell.toml")
SYSUSERS = Path("/etc/sysusers.d/edgevla.conf")
UDEV_RULES = Path("/etc/udev/rules.d/70-edgevla.rules")
STATE_DIR = Path("/var/lib/edgevla")  # the unit's StateDirectory= and WorkingDirectory=
DEFAULT_BUNDLE = STATE_DIR / "bundles" / "current"
MCU_LINK = "/dev/edgevla-mcu"

# ProtectHome=yes makes these invisible to the service: nothing it needs may live there.
HIDDEN_FROM_SERVICE = (Path("/home"), Path("/root"), Path("/run/user"))

# Device nodes of an NVIDIA GPU: the Jetson's integrated one (JetPack 5: /dev/nvhost-*,
# JetPack 6: /dev/nvgpu/igpu0/*, both /dev/nvmap) and a discrete one (/dev/nvidia*).
GPU_NODE_GLOBS = ("/dev/nvmap", "/dev/nvhost-*", "/dev/nvgpu/*/*", "/dev/nvidia*")

_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_SERIAL = re.compile(r"[A-Za-z0-9._:-]+")


class InstallError(EdgeVlaError):
    """The service cannot be installed as asked; the message says what to change."""


@dataclass
class InstallOptions:
    root: Path = Path("/")
    config: Path | None = None  # a runtime TOML to install; None keeps the installed one
    executable: Path | None = None  # the edgevla command; None: the one next to this Python
    mcu_serial: str | None = None  # the safety MCU's USB serial number, for its udev rule
    robot_network: str | None = None  # CIDR; None: robot.host of the config
    gpu_devices: tuple[str, ...] | None = None  # None: the GPU nodes found on this machine


@dataclass
class Installed:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def template(name: str) -> str:
    return resources.files("edgevla.systemd").joinpath(name).read_text()


def under(root: Path, path: Path) -> Path:
    """`path` of the target system as seen from here; a relative one is relative to the
    service's working directory, as the service resolves it."""
    path = path if path.is_absolute() else STATE_DIR / path
    return root / path.relative_to("/")


def hidden_from_service(path: Path) -> bool:
    path = path if path.is_absolute() else STATE_DIR / path
    return any(path == p or p in path.parents for p in HIDDEN_FROM_SERVICE)


def default_executable() -> Path:
    """The `edgevla` script of this installation (next to its Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "edgevla"
    if beside.exists():
        return beside
    found = shutil.which("edgevla")
    if found is None:
        raise InstallError("cannot find the edgevla command: pass --executable PATH")
    return Path(found)


def find_gpu_devices() -> tuple[str, ...]:
    """The GPU device nodes that exist on this machine (listing absent ones would make systemd
    warn at every start)."""
    nodes = set()
    for pattern in GPU_NODE_GLOBS:
        for path in glob.glob(pattern):
            try:
                if stat.S_ISCHR(os.stat(path).st_mode):
                    nodes.add(path)
            except OSError:
                continue
    return tuple(sorted(nodes))


def robot_network(config: RuntimeConfig, override: str | None) -> str:
    """What IPAddressAllow= lets through besides loopback: the robot's address or network."""
    if override:
        try:
            return str(ipaddress.ip_network(override, strict=False))
        except ValueError as exc:
            raise InstallError(f"--robot-network {override!r}: {exc}") from None
    if config.robot.kind == "sim":
        return ""
    try:
        address = ipaddress.ip_address(config.robot.host)
    except ValueError:
        raise InstallError(
            f"robot.host {config.robot.host!r} is a name, and the unit's IPAddressAllow= needs "
            "addresses: pass --robot-network CIDR (the robot's address or subnet)"
        ) from None
    return str(ipaddress.ip_network(address))


def render_unit(executable: Path, network: str, gpu_devices: tuple[str, ...]) -> str:
    if not executable.is_absolute():
        raise InstallError(f"the edgevla command must be an absolute path, not {executable}")
    if any(c.isspace() for c in str(executable)):
        raise InstallError(f"the edgevla command's path has a space: {executable}")
    if hidden_from_service(executable):
        raise InstallError(
            f"{executable} lies where ProtectHome=yes hides it from the service: install "
            "edgevla under /opt (docs/deploy.md)"
        )
    for node in gpu_devices:
        if not node.startswith("/dev/") or any(c.isspace() for c in node):
            raise InstallError(f"GPU device {node!r}: expected a path under /dev/")
    gpu = (
        "\n".join(f"DeviceAllow={node} rw" for node in gpu_devices)
        if gpu_devices
        else "# No GPU device nodes were found at install time: inference runs on the CPU."
    )
    return _fill(
        template("edgevla.service"),
        EDGEVLA=str(executable),
        GPU_DEVICES=gpu,
        ROBOT_NETWORK=network,
    ).replace("IPAddressAllow=localhost \n", "IPAddressAllow=localhost\n")


def render_udev_rules(mcu_serial: str | None) -> str:
    if mcu_serial is None:
        rule = (
            '#SUBSYSTEM=="tty", ATTRS{serial}=="<serial number>", SYMLINK+="edgevla-mcu", '
            'GROUP="dialout", MODE="0660"\n'
            "# (edgevla service install --mcu-serial SN writes this rule; "
            "`udevadm info /dev/ttyACM0` shows ID_SERIAL_SHORT)"
        )
    elif not _SERIAL.fullmatch(mcu_serial):
        raise InstallError(f"--mcu-serial {mcu_serial!r}: letters, digits, '.', '_', ':', '-'")
    else:
        rule = (
            f'SUBSYSTEM=="tty", ATTRS{{serial}}=="{mcu_serial}", SYMLINK+="edgevla-mcu", '
            'GROUP="dialout", MODE="0660"'
        )
    return _fill(template("udev.rules"), MCU_RULE=rule)


def _fill(text: str, **values: str) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = _PLACEHOLDER.search(text)
    if left:
        raise InstallError(f"template placeholder {left.group()} was not filled")  # a bug here
    return text


def default_config() -> RuntimeConfig:
    """The embedded default (the simulated cell), with the bundle where the service keeps it."""
    default = RuntimeConfig()
    return msgspec.structs.replace(
        default, policy=msgspec.structs.replace(default.policy, bundle=str(DEFAULT_BUNDLE))
    )


def default_config_text() -> str:
    return (
        "# The runtime configuration of the edgevla service (docs/runtime.md), written by\n"
        "# `edgevla service install`: the embedded default, a simulated cell. For the real\n"
        f'# cell set robot.kind, cameras.kind and mcu.kind (mcu.port = "{MCU_LINK}"),\n'
        "# then run `edgevla service verify`.\n\n" + to_toml(default_config())
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a reader (systemd, udev) never sees half a file


def install(options: InstallOptions) -> Installed:
    root = options.root
    done = Installed()
    config_path = under(root, CONFIG)
    config_text: str | None = None  # None: keep the installed one
    if options.config is not None:
        config = load_config(options.config)  # refuse a bad config before writing anything
        config_text = Path(options.config).read_text()
    elif config_path.exists():
        config = load_config(config_path)
    else:
        config = default_config()
        config_text = default_config_text()
    executable = options.executable or default_executable()
    if root == Path("/") and not os.access(executable, os.X_OK):
        raise InstallError(f"{executable} is not an executable file")
    gpu = find_gpu_devices() if options.gpu_devices is None else options.gpu_devices
    unit = render_unit(executable, robot_network(config, options.robot_network), gpu)
    rules = render_udev_rules(options.mcu_serial)
    _write(under(root, UNIT), unit)
    done.written.append(UNIT)
    if config_text is not None:
        _write(config_path, config_text)
        done.written.append(CONFIG)
    else:
        done.kept.append(CONFIG)
    env_path = under(root, ENV_FILE)
    if env_path.exists():
        done.kept.append(ENV_FILE)
    else:
        _write(env_path, template("edgevla.env"))
        done.written.append(ENV_FILE)
    _write(under(root, SYSUSERS), template("sysusers.conf"))
    _write(under(root, UDEV_RULES), rules)
    done.written += [SYSUSERS, UDEV_RULES]
    if not gpu:
        done.notes.append("no GPU device nodes found: the unit allows none (CPU inference)")
    if options.mcu_serial is None:
        done.notes.append(f"no --mcu-serial: the udev rule for {MCU_LINK} is left commented out")
    return done
