"""The `edgevla` command line: exit codes 0 (ok), 1 (refused or failed), 2 (bad usage)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

from edgevla.cli import main
from edgevla.runtime.backend import TENSORRT
from edgevla.runtime.bundle import load_bundle, sha256_file
from edgevla.runtime.manifest import MANIFEST_NAME

GRAPHS = ("prefix", "expert_step", "expert_cached", "value", "system1")


def flat(text: str) -> str:
    """Collapse whitespace: rich wraps long lines at 120 columns when not on a terminal."""
    return " ".join(text.split())


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, flat(captured.out), flat(captured.err)


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    """Run argv, expecting argparse to exit 2; return its stderr."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return flat(captured.err)


def run_script(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgevla.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """This onnxruntime, minus TensorRT, whatever the machine the test runs on."""
    providers = [p for p in onnxruntime.get_available_providers() if p != TENSORRT]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(providers))


# ----------------------------------------------------------------------------- bundle verify


def test_verify_good_bundle(capsys: pytest.CaptureFixture[str], tiny_bundle: Path) -> None:
    code, out, err = run(capsys, "bundle", "verify", tiny_bundle)
    assert code == 0
    assert out.startswith("OK ")
    assert "6 files hash-checked, 5 graphs match their signatures, parity passed" in out
    assert "REFUSED" not in err


def test_verify_tampered_bundle(capsys: pytest.CaptureFixture[str], bundle_copy: Path) -> None:
    flip_middle_byte(bundle_copy / "expert_step.onnx")
    code, out, err = run(capsys, "bundle", "verify", bundle_copy)
    assert code == 1
    assert out == ""
    assert f"REFUSED bundle refused: {bundle_copy / 'expert_step.onnx'}" in err
    assert "sha256 is" in err
    # The manifest field survives rich's markup parsing.
    assert "[files.expert_step.onnx.sha256]" in err


def test_refusal_of_a_path_that_looks_like_markup(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "bundle", "verify", tmp_path / "[/x]" / "b")
    assert code == 1
    assert "[/x]" in err and "does not exist" in err


def test_verify_opens_the_graphs(capsys: pytest.CaptureFixture[str], bundle_copy: Path) -> None:
    """system1.onnx copied over value.onnx and re-hashed: `info` (manifest only) accepts it,
    `verify` opens the graph and refuses it."""
    shutil.copy(bundle_copy / "system1.onnx", bundle_copy / "value.onnx")
    path = bundle_copy / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    value = bundle_copy / "value.onnx"
    manifest["files"]["value.onnx"] = {"sha256": sha256_file(value), "bytes": value.stat().st_size}
    path.write_text(json.dumps(manifest))
    assert run(capsys, "bundle", "info", bundle_copy)[0] == 0
    code, out, err = run(capsys, "bundle", "verify", bundle_copy)
    assert code == 1
    assert out == ""
    assert f"REFUSED bundle refused: {bundle_copy / 'value.onnx'}" in err
    assert "expected ['value_summary', 'actions']" in err


def test_verify_nonexistent_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "bundle", "verify", tmp_path / "nowhere")
    assert code == 1
    assert out == ""
    assert str(tmp_path / "nowhere") in err
    assert "does not exist" in err


def test_verify_as_a_script(tiny_bundle: Path, bundle_copy: Path) -> None:
    good = run_script("bundle", "verify", tiny_bundle)
    assert good.returncode == 0, good.stderr
    assert flat(good.stdout).startswith(f"OK {tiny_bundle}:")

    (bundle_copy / "tokenizer.json").unlink()
    bad = run_script("bundle", "verify", bundle_copy)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert str(bundle_copy / "tokenizer.json") in flat(bad.stderr)


def test_usage_error_as_a_script() -> None:
    result = run_script("export", "--config", "tiny")
    assert result.returncode == 2
    assert "the following arguments are required: --out" in result.stderr


# ----------------------------------------------------------------------------- bundle info


def test_info_shows_graphs_and_parity(
    capsys: pytest.CaptureFixture[str], tiny_bundle: Path
) -> None:
    code, out, _ = run(capsys, "bundle", "info", tiny_bundle)
    assert code == 0
    assert "model 'tiny', precision fp32, 5 candidates, 10 denoising steps" in out
    graphs_table, parity_table = out.split("parity vs PyTorch (3 observations)")
    for name in GRAPHS:
        assert f"│ {name} " in graphs_table
    assert "noisy_actions float32[5, 8, 7]" in graphs_table
    assert "cosine" in parity_table
    assert "max abs err" in parity_table
    assert re.search(r"│ plan +│ \w+ +│ [01]\.\d{6} .*│ yes", parity_table)
    assert "│ NO " not in parity_table


def test_info_refuses_a_bad_bundle(capsys: pytest.CaptureFixture[str], bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST_NAME).write_text("{")
    code, out, err = run(capsys, "bundle", "info", bundle_copy)
    assert code == 1
    assert out == ""
    assert f"REFUSED bundle refused: {bundle_copy / MANIFEST_NAME}: not valid JSON" in err


# ----------------------------------------------------------------------------- bundle warmup


@pytest.mark.usefixtures("no_tensorrt")
def test_warmup_without_tensorrt(capsys: pytest.CaptureFixture[str], tiny_bundle: Path) -> None:
    code, out, err = run(capsys, "bundle", "warmup", tiny_bundle, "--runs", "1")
    assert code == 0
    assert "TensorRT is not available" in err
    assert "Warming up what is available" in err
    assert "warm-up on CPUExecutionProvider (1 runs per graph)" in out
    for name in GRAPHS:
        assert re.search(rf"{name} \d+\.\d ms", out)


@pytest.mark.usefixtures("no_tensorrt")
def test_warmup_requiring_tensorrt_fails(
    capsys: pytest.CaptureFixture[str], tiny_bundle: Path
) -> None:
    code, out, err = run(capsys, "bundle", "warmup", tiny_bundle, "--require-tensorrt")
    assert code == 1
    assert out == ""
    assert "FAILED TensorRT is not available" in err


# ----------------------------------------------------------------------------- bad usage


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["bundle"], "the following arguments are required: ACTION"),
        (["bundle", "verify"], "the following arguments are required: DIR"),
        (["export"], "the following arguments are required: --out"),
        (["export", "--out", "X"], "one of the arguments --checkpoint --config is required"),
        (
            ["export", "--config", "tiny", "--checkpoint", "ckpt", "--out", "X"],
            "argument --checkpoint: not allowed with argument --config",
        ),
        (
            ["export", "--config", "tiny", "--out", "X", "--candidates", "0"],
            "argument --candidates: must be >= 1, got 0",
        ),
        (
            ["export", "--config", "tiny", "--out", "X", "--candidates", "abc"],
            "argument --candidates: expected a whole number, got 'abc'",
        ),
        (
            ["export", "--config", "tiny", "--out", "X", "--precision", "fp8"],
            "argument --precision: invalid choice: 'fp8'",
        ),
        (["model", "info", "--config", "tiny", "--denoise-steps", "-1"], "must be >= 1, got -1"),
        (["bundle", "warmup", "B", "--runs", "0"], "argument --runs: must be >= 1, got 0"),
    ],
    ids=lambda v: " ".join(v) or "no-args" if isinstance(v, list) else "",
)
def test_bad_usage_exits_2(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    err = usage_error(capsys, *argv)
    assert "usage: edgevla" in err
    assert message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--config", "huge", "--out", "X"],
        ["checkpoint", "init", "--config", "huge", "--out", "X"],
        ["model", "info", "--config", "huge"],
    ],
    ids=["export", "checkpoint-init", "model-info"],
)
def test_unknown_config_lists_the_known_ones(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    assert "unknown model config 'huge'; choose from ['pi0-scale', 'small', 'tiny']" in err
    assert not (tmp_path / "X").exists()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- export


def test_export_refuses_existing_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    existing = tmp_path / "bundle"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me\n")
    before = snapshot(existing)
    code, out, err = run(capsys, "export", "--config", "tiny", "--out", existing)
    assert code == 1
    assert out == ""
    assert f"{existing} already exists; pass --overwrite to replace it" in err
    assert snapshot(existing) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging directory left


def test_checkpoint_init_then_export_verifies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ckpt, out_dir = tmp_path / "ckpt", tmp_path / "bundle"
    code, out, _ = run(
        capsys, "checkpoint", "init", "--config", "tiny", "--seed", "3", "--out", ckpt
    )
    assert code == 0
    assert f"checkpoint written: {ckpt} (config tiny, seed 3)" in out
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
    }

    code, out, _ = run(
        capsys,
        *("export", "--checkpoint", ckpt, "--out", out_dir),
        *("--candidates", "3", "--parity-observations", "1"),
    )
    assert code == 0
    assert f"bundle written: {out_dir} (fp32, N=3, parity passed" in out

    code, out, _ = run(capsys, "bundle", "verify", out_dir)
    assert code == 0
    assert out.startswith(f"OK {out_dir}:")
    bundle = load_bundle(out_dir)
    assert bundle.candidates == 3
    assert bundle.manifest.export_options["origin"]["checkpoint"] == str(ckpt)
    assert bundle.manifest.export_options["origin"]["seed"] == 3


def test_export_with_an_expert_schedule_records_it_and_passes_parity(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The parity gate plans through the schedule (ONNX against PyTorch, both extrapolating),
    the manifest carries it, the runtime and `bundle info` read it back."""
    out_dir = tmp_path / "bundle"
    code, out, _ = run(
        capsys,
        *("export", "--config", "tiny", "--out", out_dir, "--candidates", "3"),
        *("--parity-observations", "1", "--expert-full-steps", "0,4,7,9"),
        *("--expert-cache-extrapolation", "linear"),
    )
    assert code == 0, out
    sampling = load_bundle(out_dir).manifest.sampling
    assert sampling.expert_full_steps == [0, 4, 7, 9]
    assert sampling.expert_cache_extrapolation == "linear"
    code, out, _ = run(capsys, "bundle", "info", out_dir)
    assert code == 0
    assert "action-expert caching: blocks run on Euler steps 0, 4, 7, 9 of 10 (linear in" in out


def test_export_refuses_a_bad_expert_schedule_by_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = usage_error(
        capsys, "export", "--config", "tiny", "--out", tmp_path / "b", "--expert-full-steps", "0,x"
    )
    assert "expected comma-separated step numbers such as 0,4,7,9, got '0,x'" in err
    code, _, err = run(
        capsys,
        *("export", "--config", "tiny", "--out", tmp_path / "b"),
        *("--expert-full-steps", "0,4", "--expert-cache-every", "2"),
    )
    assert code != 0
    words = "ExportOptions.expert_full_steps: an explicit schedule replaces expert_cache_every"
    assert words in err
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- model info


def test_model_info_pi0_scale(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "model", "info", "--config", "pi0-scale")
    assert code == 0
    total = re.search(r"model 'pi0-scale': ([\d.]+) M parameters", out)
    assert total is not None, out
    assert 1_000 < float(total.group(1)) < 10_000  # billions of parameters (about 3 B)
    for component in ("vision", "prefix_decoder", "action_expert", "value_head", "system1"):
        assert f"│ {component} " in out
    assert "GFLOPs (N=5, K=10)" in out
    assert "prefix: 818 tokens (768 visual)" in out


def test_the_emulator_cli_takes_fault_commands(tmp_path) -> None:
    """`edgevla ur-emulator`: starts, takes a typed fault, names an unknown one, stops."""
    pytest.importorskip("rtde_control", reason="ur_rtde is not installed")

    done = subprocess.run(
        [sys.executable, "-m", "edgevla.cli", "ur-emulator", "--duration", "2"],
        input="pstop\nbogus\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "RTDE 30004, dashboard 29999, script 30003" in done.stdout
    assert "protective stop" in done.stdout and "safety mode 3" in done.stdout
    assert "unknown command 'bogus'" in done.stdout


# ----------------------------------------------------------------------------- camera


def test_camera_record_from_the_simulator_then_info(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed")
    path = tmp_path / "wrist.db3"
    argv = ["camera", "record", "--sim", "wrist", "--out", path, "--seconds", "0.5"]
    code, out, err = run(capsys, *argv, "--width", "64", "--height", "48", "--depth")
    assert code == 0, err
    assert "15 frames of simulated camera 'wrist'" in out and "serial SIM-wrist-0" in out
    code, out, err = run(capsys, *argv)
    assert code == 1 and "exists; pass --overwrite" in err
    code, out, err = run(capsys, "camera", "info", path)
    assert code == 0, err
    assert "serial SIM-wrist-0" in out
    assert re.search(r"Color .*rgb8 .*64x48 .*30", out) and re.search(r"Depth .*z16 .*64x48", out)
    code, out, err = run(capsys, "camera", "record", "--sim", "scene", "--out", tmp_path / "x.bag")
    assert code == 1 and ".db3" in err


def test_camera_commands_name_a_missing_serial(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed")
    out_file = tmp_path / "live.db3"
    code, _, err = run(capsys, "camera", "record", "--serial", "000111", "--out", out_file)
    assert code == 1 and "no RealSense with serial 000111 is connected" in err
    assert not out_file.exists()
    code, _, err = run(capsys, "camera", "info", "000111")
    assert code == 1 and "serial 000111" in err
    code, _, err = run(capsys, "camera", "info", tmp_path / "none.db3")
    assert code == 1 and "no recording at" in err
    code, out, _ = run(capsys, "camera", "list")
    assert code == 0 and ("no RealSense connected" in out or "serial" in out)
