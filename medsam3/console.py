"""What every command-line front end (``medsam3.cli``, ``medsam3.app``) shares: logging set-up,
common flags, and the one-line error users get for bad input.

A leaf: standard library only at import time (torch and transformers are never imported here
unless :func:`quiet_weight_loading` is called), so ``--help`` and mistakes stay fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable

from .errors import UserError

__all__ = [
    "add_backend_flags",
    "add_set_flag",
    "check_backend_flags",
    "one_line",
    "print_error",
    "quiet_weight_loading",
    "setup_logging",
    "report_bug",
    "run_command",
    "user_errors",
]


def setup_logging(
    verbose: bool = False,
    quiet: bool = False,
    libraries: tuple[str, ...] = ("transformers", "huggingface_hub", "peft"),
    library_level: int = logging.ERROR,
) -> None:
    """medsam3's messages at INFO (DEBUG with ``-v``, WARNING with ``-q``), bare unless ``-v``.

    The ``libraries``' chatter (load bars, config notes) stays at ``library_level`` unless ``-v``.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    for name in libraries:
        logging.getLogger(name).setLevel(logging.INFO if verbose else library_level)


def add_set_flag(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable): one config key overridden, as every command takes it."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )


def add_backend_flags(parser) -> None:
    """``--backend`` and ``--onnx-dir``, as infer_sam.py, medsam3-evaluate and medsam3-app take them."""
    parser.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="torch (default) or onnxruntime: the graphs medsam3-export --onnx wrote to --onnx-dir (docs/onnx.md)",
    )
    parser.add_argument("--onnx-dir", metavar="DIR", help="with --backend onnxruntime: the folder medsam3-export wrote")


def check_backend_flags(args: argparse.Namespace, error: type[UserError] = UserError) -> None:
    """Refuse flag combinations the backend cannot honour, before anything heavy loads.

    ``--precision`` int8 exists only as ONNX Runtime graphs; bf16 only under PyTorch.
    """
    precision = getattr(args, "precision", None)
    if args.backend == "onnxruntime":
        if not args.onnx_dir:
            raise error("--backend onnxruntime needs --onnx-dir DIR (write one with medsam3-export --onnx DIR)")
        if precision == "bf16":
            raise error("--precision bf16 is PyTorch's; with --backend onnxruntime use fp32 or int8")
    elif precision == "int8" or args.onnx_dir:
        raise error("--precision int8 and --onnx-dir are for --backend onnxruntime (add --backend onnxruntime)")


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

    Only :class:`medsam3.errors.UserError` (and its subclasses across the package): a ``ValueError``
    from inside numpy or from a bug of ours is not the user's mistake and keeps its traceback
    (see :func:`report_bug`). Importing this never imports torch.
    """
    return (UserError,)


BUG_REPORT_HINT = (
    "this is a bug in medsam3, not a problem with your input; please report it with the traceback above "
    "and the command you ran (see the README's 'Reporting problems')"
)


def run_command(prog: str, command: Callable[[], int], verbose: bool = False, interrupted: str = "") -> int:
    """Run a command's body under the one error policy every front end shares.

    :class:`~medsam3.errors.UserError` -> one ``prog: error:`` line, exit 2 (with ``-v`` the traceback
    too); Ctrl-C -> ``interrupted`` (what was kept, how to continue), exit 130; stdout's reader gone
    (``| head``) -> exit 141, silently; anything else is a bug: its traceback and where to report it,
    exit 1.
    """
    try:
        return command()
    except BrokenPipeError:
        # The reader of our output stopped reading (`... | head`): neither a bug nor the user's mistake.
        # Point stdout at devnull so the interpreter's final flush does not fail again, and exit as a
        # shell reports a command its reader cut off (128 + SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted{'; ' + interrupted if interrupted else ''}\n")
        return 130
    except UserError as exc:
        if verbose:
            logging.getLogger(prog).exception("failed")
        return print_error(prog, exc)
    except Exception:
        return report_bug(prog)


def report_bug(prog: str) -> int:
    """Print the exception being handled with its traceback, say it is a bug, and return exit code 1.

    Straight to stderr (not through logging): the traceback must show even with ``-q``.
    """
    traceback.print_exc(file=sys.stderr)
    sys.stderr.write(f"{prog}: {BUG_REPORT_HINT}\n")
    return 1


def one_line(exc: BaseException | str) -> str:
    """An exception's message on one line (the CLI promises one ``error:`` line)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def print_error(prog: str, message: str | BaseException) -> int:
    """The one ``prog: error: ...`` line on stderr; returns exit code 2 (bad input)."""
    sys.stderr.write(f"{prog}: error: {one_line(message)}\n")
    return 2
