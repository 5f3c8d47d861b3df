"""What every benchmark records about where it ran, and how it saves its result."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}


def export_in_child(source: str | Path, out: Path, *flags: str) -> None:
    """`edgevla export --config SOURCE --out OUT FLAGS` in a child process, as a user runs it;
    a `Path` source is a checkpoint directory (`--checkpoint SOURCE`).

    The benchmark process then starts without onnxruntime's shared thread pool (it may time
    per-session pools) and without the exporter's memory.
    """
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgevla.cli",
            "export",
            *(["--checkpoint", str(source)] if isinstance(source, Path) else ["--config", source]),
            "--out",
            str(out),
            "--parity-observations",
            "1",
            *flags,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def save(record: dict, out: Path, name: str) -> Path:
    """Write `record` as `<out>/<name>-<created_utc>.json` and return the path."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = record["created_utc"].replace(":", "").replace("-", "")
    path = out / f"{name}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def commanded_speed(results, step_period_s: float) -> float:
    """Mean joint speed (rad/s) of the first four steps of every chosen chunk, over all plans
    (the steering benchmarks' measure of how fast the policy asks the arm to move)."""
    import numpy as np

    from edgevla.export.steering import chunk_speed

    states = np.stack([e.obs.state for r in results for e in r.events])
    chunks = np.stack([e.chunk for r in results for e in r.events])
    return float(chunk_speed(states, chunks[:, :4], step_period_s).mean())
