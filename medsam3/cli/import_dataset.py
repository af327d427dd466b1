"""``medsam3-import DATASET_DIR OUT_DIR`` (also ``python -m medsam3 import``): an nnU-Net v2 / MSD
dataset folder becomes the COCO layout the trainer reads (see :mod:`medsam3.data.importer`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..console import run_command, setup_logging
from . import add_version_flag

logger = logging.getLogger("medsam3.import")

PROG = "medsam3-import"
EXAMPLES = f"""examples:
  {PROG} ../shared/datasets/Dataset103_BraTS2013 data/brats --channel FLAIR
  {PROG} Dataset104_HC18 data/hc18 --group 'HC18_\\d+' --valid-fraction 0.1 --test-fraction 0.2
  {PROG} Dataset105_PH2 data/ph2 --concept 'skin lesion=melanocytic lesion' --synonyms 'melanocytic lesion=mole,nevus'
  {PROG} Task01_BrainTumour data/msd --split-file data/brats/manifest.json --overwrite   # the same split again
then train with training.data_dir: data/brats (configs/import_example.yaml).
exit codes: 0 imported, 2 bad input (one line naming the case and the fix; nothing is left behind)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Import an nnU-Net v2 raw or Medical Segmentation Decathlon dataset folder as COCO "
        "splits (OUT_DIR/{train,valid,test}/_annotations.coco.json) with a manifest.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset_dir", metavar="DATASET_DIR", help="folder holding dataset.json, imagesTr, labelsTr")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created; refused if it exists, see --overwrite)")
    s = p.add_argument_group("what to import")
    s.add_argument("--channel", help="channel index or name (dataset.json channel_names); default the first")
    s.add_argument("--cases", nargs="+", metavar="CASE", help="import only these cases")
    s.add_argument("--limit", type=int, metavar="N", help="import only the first N cases (a quick look)")
    s.add_argument(
        "--negative-share",
        type=float,
        default=0.1,
        help="share of slices/images holding no concept that are kept as negatives (default 0.1)",
    )
    s.add_argument(
        "--semantic",
        action="store_true",
        help="one mask per concept and slice, instead of one instance per connected component",
    )
    s.add_argument("--window", help="intensity window for CT (a preset, 'level,width', percentile); default auto")
    c = p.add_argument_group("concepts")
    c.add_argument("--concept", action="append", metavar="OLD=NEW", help="rename a concept (repeatable)")
    c.add_argument(
        "--synonyms", action="append", metavar="NAME=A,B", help="prompts the trainer samples besides the name"
    )
    sp = p.add_argument_group("splits (by subject, never by slice)")
    sp.add_argument("--valid-fraction", type=float, default=0.1, help="share of subjects for validation (default 0.1)")
    sp.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="share of subjects for test (default 0.1); unused when imagesTs has labelled cases",
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the split and of the negatives (default 0)")
    sp.add_argument(
        "--group",
        metavar="REGEX",
        help="subject of a case name: the regex's first group or match, e.g. 'HC18_\\d+' (default: the case)",
    )
    sp.add_argument(
        "--split-file",
        metavar="JSON",
        help='explicit split: {"train": [...], "valid": [...], "test": [...]} or an earlier manifest.json',
    )
    o = p.add_argument_group("output")
    o.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists (only once complete)")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    o.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bar")
    add_version_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..data.importer import ImportOptions, import_dataset, parse_pairs, synonyms_from_pairs

    options = ImportOptions(
        channel=args.channel,
        cases=args.cases,
        limit=args.limit,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        split_file=args.split_file,
        group=args.group,
        seed=args.seed,
        negative_share=args.negative_share,
        semantic=args.semantic,
        concept_renames=parse_pairs(args.concept, "--concept"),
        synonyms=synonyms_from_pairs(args.synonyms),
        window=args.window,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    t0 = time.perf_counter()
    manifest = import_dataset(args.dataset_dir, args.out_dir, options)
    lines = [f"{args.out_dir}: imported in {time.perf_counter() - t0:.1f} s"]
    for split, counts in manifest["counts"].items():
        per_concept = ", ".join(f"{name} {c['images']}" for name, c in counts["concepts"].items())
        lines.append(
            f"  {split}: {counts['cases']} case(s), {counts['images']} image(s) "
            f"({counts['negatives']} negative); images per concept: {per_concept}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    io_logger = logging.getLogger("medsam3.io")
    io_level = io_logger.level
    io_logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return run_command(PROG, lambda: run(args), args.verbose, interrupted="nothing was written")
    finally:  # called in-process (tests, notebooks): the io logger's level is not ours to keep
        io_logger.setLevel(io_level)


if __name__ == "__main__":
    sys.exit(main())
