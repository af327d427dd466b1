"""The base class of every error that means "fix your input", importable without torch.

Command-line front ends turn these, and only these, into one ``prog: error: ...`` line and exit
code 2. Anything else escaping a command is a bug in medsam3 and is shown with its traceback.
It derives from ``ValueError`` so callers that caught ``ValueError`` before keep working.
"""

from __future__ import annotations

__all__ = ["InputNotFoundError", "UserError"]


class UserError(ValueError):
    """A problem with what the user gave (a file, a flag, a config key), with a message saying how to fix it."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder named on the command line or in a config does not exist."""
