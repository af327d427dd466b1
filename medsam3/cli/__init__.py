"""Command-line entry points; the root scripts (infer_sam.py, ...) call these.

The top layer: argument parsing and dispatch only, may import anything in medsam3; nothing imports it.

Feedback on a mistake must be quick: a command module imports only the standard library, the config
(PyYAML) and the image readers at load time; torch and transformers are imported inside the
functions that need them, after the arguments, the config and the input files have been checked.
``scripts/bench_cli_startup.py`` measures it. Logging set-up, the --set flag and the one-line error
live in :mod:`medsam3.console`, shared with the web app.
"""

from __future__ import annotations

import argparse

__all__ = ["add_version_flag"]


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """``--version``: medsam3's version, read from the package without importing torch."""
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s (medsam3 {__version__})")
