"""Command-line entry points; the root scripts (infer_sam.py, ...) call these.

The top layer: argument parsing and dispatch only, may import anything in medsam3; nothing imports it.

Feedback on a mistake must be quick: a command module imports only the standard library, the config
(PyYAML) and the image readers at load time; torch and transformers are imported inside the
functions that need them, after the arguments, the config and the input files have been checked.
``scripts/bench_cli_startup.py`` measures it.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_version_flag", "one_line", "quiet_weight_loading", "setup_logging", "user_errors"]


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    # transformers/huggingface_hub chatter (load bars, config notes) only when asked for.
    for name in ("transformers", "huggingface_hub", "peft"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """``--version``: medsam3's version, read from the package without importing torch."""
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s (medsam3 {__version__})")


def add_set_flag(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable): one config key overridden, as every command takes it."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )


def quiet_weight_loading(verbose: bool = False, quiet: bool = False) -> None:
    """Hide transformers' "Loading weights" bar (every run, a local read) unless ``-v``.

    Hub download bars stay, except with ``-q``: a first download of SAM3 takes minutes and deserves
    one. Call it just before a model is loaded; it imports transformers.
    """
    if verbose:
        return
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    downloads_shown = not quiet and not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # also switches off huggingface_hub's bars ...
    if downloads_shown:
        enable_progress_bars()  # ... which come back, unless the user disabled them (HF_HUB_DISABLE_PROGRESS_BARS)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "fix your input": one ``prog: error:`` line and exit code 2.

    medsam3's own (ConfigError, AdapterError, ImageReadError, DatasetError, EvaluationError) derive
    from ValueError; ``ModelLoadError`` (a RuntimeError) is taken from its module only if that was
    imported, since it cannot have been raised otherwise. So catching never imports torch.
    """
    errors: list[type[BaseException]] = [ValueError, FileNotFoundError]
    sam3 = sys.modules.get("medsam3.model.sam3")
    if sam3 is not None:
        errors.append(sam3.ModelLoadError)
    return tuple(errors)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (the CLI promises one ``error:`` line)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
