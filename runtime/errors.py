"""Named errors of the runtime. Each says which file and which field is at fault."""

from __future__ import annotations

from pathlib import Path


class EdgeVlaError(Exception):
    """Base of every error edgevla raises on purpose."""


class ConfigError(EdgeVlaError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class InvalidSetting(ConfigError):
    """One named setting is out of range; ``field`` names it so a caller can re-home the error."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class BundleError(EdgeVlaError):
    """A bundle was refused. ``path`` names the file, ``field`` the manifest field at fault."""

    def __init__(self, path: Path | str, field: str | None, reason: str) -> None:
        self.path = Path(path)
        self.field = field
        self.reason = reason
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"bundle refused: {where}: {reason}")


class BundleFileMissing(BundleError):
    """A file the manifest lists is not in the bundle directory."""


class BundleHashMismatch(BundleError):
    """A file's sha256 differs from the one recorded in the manifest."""


class BundleSchemaError(BundleError):
    """The manifest is unreadable, of an unknown schema version, or has a malformed field."""


class BundleShapeMismatch(BundleError):
    """A graph's inputs or outputs disagree with the manifest or with the model config."""


class BundleParityFailed(BundleError):
    """The manifest's parity report failed, contradicts itself or is looser than the gate."""


class BundleGraphInvalid(BundleError):
    """onnxruntime could not open a graph file (corrupt, or external data it refuses)."""


class InferenceInputError(EdgeVlaError, ValueError):
    """An observation or tensor handed to the policy has the wrong shape, dtype or values."""


class NonFiniteOutput(EdgeVlaError):
    """A graph returned NaN or Inf; ``graph`` and ``output`` name where it appeared."""

    def __init__(self, graph: str, output: str, detail: str) -> None:
        self.graph = graph
        self.output = output
        super().__init__(f"graph {graph!r} output {output!r} is not finite: {detail}")


class BackendUnavailable(EdgeVlaError):
    """An execution provider that was asked for by name is not present in this onnxruntime."""
