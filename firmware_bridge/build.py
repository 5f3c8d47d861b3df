"""Build the reference firmware and its test programs for this host with the system C compiler.

    python -m edgevla.firmware_bridge.build OUT_DIR [--sanitize]

The portable core (`firmware/evb_protocol.c`, `evb_core.c`) is what a board runs; `board_host.c`
makes it a process on a pty or serial port (tests, bench work, dry runs). `--sanitize` builds with
AddressSanitizer and UndefinedBehaviorSanitizer (any finding aborts the program).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from edgevla.runtime.errors import EdgeVlaError

FIRMWARE = Path(__file__).resolve().parent / "firmware"
CORE = ("evb_protocol.c", "evb_core.c")
PROGRAMS = {
    "edgevla-mcu-host": ("board_host.c", *CORE),
    "test_vectors": ("test_vectors.c", "evb_protocol.c"),
    "fuzz_parser": ("fuzz_parser.c", "evb_protocol.c"),
}
FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic")
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1")


class FirmwareBuildError(EdgeVlaError):
    """No C compiler, or the firmware does not compile."""


def compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    raise FirmwareBuildError("no C compiler (cc, gcc or clang) on PATH: apt-get install gcc")


def build(out: Path, *, sanitize: bool = False) -> dict[str, Path]:
    """Compile every program into `out`; returns their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    cc = compiler()
    built = {}
    for name, sources in PROGRAMS.items():
        target = out / name
        cmd = [cc, *FLAGS, *(SANITIZE if sanitize else ()), "-I", str(FIRMWARE), "-o", str(target)]
        cmd += [str(FIRMWARE / s) for s in sources]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise FirmwareBuildError(f"{name} does not compile:\n{result.stderr.strip()}")
        built[name] = target
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sanitize", action="store_true")
    args = parser.parse_args()
    for name, path in build(args.out, sanitize=args.sanitize).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
