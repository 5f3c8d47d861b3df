"""The command line's two consoles: results on stdout, errors and warnings on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

# Wide enough for a joint-space table when piped into a log or CI output.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
