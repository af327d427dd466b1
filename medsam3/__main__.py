"""``python -m medsam3 COMMAND ...``: the console scripts without installing them.

Commands: infer (infer_sam.py), train (train_sam3_lora_native.py), evaluate (scripts/evaluate.py),
download (medsam3-download), import (medsam3-import).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "infer": "infer",
    "train": "train",
    "evaluate": "evaluate",
    "download": "download",
    "import": "import_dataset",
}
USAGE = f"usage: python -m medsam3 {{{','.join(COMMANDS)}}} [ARGS ...]   (COMMAND --help for each)\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if argv[0] not in COMMANDS:
        sys.stderr.write(USAGE + f"python -m medsam3: error: unknown command {argv[0]!r}\n")
        return 2
    module = importlib.import_module(f"medsam3.cli.{COMMANDS[argv[0]]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
