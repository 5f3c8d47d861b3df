"""Publishing a bundle: what export_bundle may replace, checks before work, durability, rollback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgevla.export import bundle_writer
from edgevla.export.bundle_writer import ExportOptions, export_bundle
from edgevla.export.checkpoint import ReferencePolicy
from edgevla.export.parity import ParityError
from edgevla.runtime.bundle import load_bundle
from edgevla.runtime.errors import ConfigError, EdgeVlaError
from edgevla.runtime.manifest import MANIFEST_NAME

QUICK = ExportOptions(candidates=2, parity_observations=1)


def _no_graph_export(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and skip) graph exports: proof that a refusal came before any export work."""
    exported: list[str] = []
    monkeypatch.setattr(
        bundle_writer, "export_graph", lambda model, spec, *rest: exported.append(spec.name)
    )
    return exported


@pytest.mark.parametrize(
    "make",
    [
        lambda p: (p.mkdir(), (p / "thesis.tex").write_text("years of work")),
        lambda p: (p.mkdir(), (p / "sub").mkdir(), (p / "sub" / "manifest.json").write_text("{}")),
        lambda p: p.write_text("a file, not a directory"),
    ],
    ids=["directory-of-other-things", "manifest-only-deeper", "plain-file"],
)
def test_overwrite_refuses_to_replace_what_is_not_a_bundle(
    tiny_policy: ReferencePolicy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make
) -> None:
    out = tmp_path / "results"
    make(out)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    exported = _no_graph_export(monkeypatch)
    with pytest.raises(EdgeVlaError, match="not a bundle") as info:
        export_bundle(tiny_policy, out, QUICK, overwrite=True)
    assert str(out) in str(info.value)
    assert exported == []
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"candidates": 0}, "ExportOptions.candidates"),
        ({"denoise_steps": 0}, "ExportOptions.denoise_steps"),
        ({"start_time_min": 0.0}, "ExportOptions.start_time_min"),
        ({"start_time_min": 0.95, "start_time_max": 0.9}, "ExportOptions.start_time_min"),
        ({"start_time_max": 1.1}, "ExportOptions.start_time_max"),
        ({"noise_temperature": 0.0}, "ExportOptions.noise_temperature"),
        ({"s1_steps": 0}, "ExportOptions.s1_steps"),
        ({"s1_theta": 0.0}, "ExportOptions.s1_theta"),
        ({"s1_theta": 1.5}, "ExportOptions.s1_theta"),
        ({"precision": "int8"}, "ExportOptions.precision"),
        ({"parity_observations": 0}, "ExportOptions.parity_observations"),
        ({"expert_full_steps": (0, 12)}, "ExportOptions.expert_full_steps"),
        ({"expert_cache_extrapolation": "cubic"}, "ExportOptions.expert_cache_extrapolation"),
    ],
)
def test_invalid_options_are_refused_before_any_work(
    tiny_policy: ReferencePolicy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict,
    field: str,
) -> None:
    exported = _no_graph_export(monkeypatch)
    out = tmp_path / "new" / "bundle"
    with pytest.raises(ConfigError) as info:
        export_bundle(tiny_policy, out, ExportOptions(**options))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert exported == []
    assert list(tmp_path.iterdir()) == []


def test_failed_export_removes_the_parents_it_created(
    tiny_policy: ReferencePolicy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exists").mkdir()
    out = tmp_path / "exists" / "a" / "b" / "bundle"

    def fail(model, spec, *rest):
        raise ParityError("injected")

    monkeypatch.setattr(bundle_writer, "export_graph", fail)
    with pytest.raises(ParityError):
        export_bundle(tiny_policy, out, QUICK)
    assert [p.name for p in tmp_path.iterdir()] == ["exists"]
    assert list((tmp_path / "exists").iterdir()) == []


def test_files_and_directory_reach_the_disk_before_the_rename(
    tiny_policy: ReferencePolicy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, bundle_writer._rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: Path, dst: Path) -> None:
        events.append(("rename", str(src)))
        real_rename(src, dst)

    monkeypatch.setattr(bundle_writer.os, "fsync", fsync)
    monkeypatch.setattr(bundle_writer, "_rename", rename)
    out = tmp_path / "bundle"
    export_bundle(tiny_policy, out, QUICK)
    first_rename = next(i for i, (kind, _) in enumerate(events) if kind == "rename")
    staging = Path(events[first_rename][1])
    synced = {Path(path) for kind, path in events[:first_rename] if kind == "fsync"}
    assert staging in synced
    assert {staging / p.name for p in out.iterdir()} <= synced
    assert MANIFEST_NAME in {p.name for p in synced}
    assert ("fsync", str(tmp_path)) in events[first_rename:]  # the rename itself


def test_failed_second_rename_puts_the_old_bundle_back(
    tiny_policy: ReferencePolicy, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)  # N = 5
    before = (out / MANIFEST_NAME).read_bytes()
    real_rename = bundle_writer._rename
    calls: list[Path] = []

    def rename(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:  # staging -> out, after out was moved aside
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(bundle_writer, "_rename", rename)
    with pytest.raises(OSError, match="No space left"):
        export_bundle(tiny_policy, out, QUICK, overwrite=True)
    assert len(calls) == 3  # out aside, staging in (failed), old bundle back
    assert (out / MANIFEST_NAME).read_bytes() == before
    assert load_bundle(out).candidates == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
