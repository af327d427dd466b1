"""Evaluate text-prompted segmentation on labelled 2D (COCO) and 3D (NIfTI) sets, the way papers report it.

Why this module exists: MedSAM3's table is "Dice per concept per modality, text vs text+box". That
number depends on choices (what counts as ground truth, which box, which threshold, what happens
with empty masks) that must be the same for every row, written down, and recomputable from files.

Rules (all fixed here, all in docs/evaluation.md):

* **Reading.** A COCO split is read by :func:`medsam3.data.coco_records.read_coco`, the reader
  training uses, with its cleaning rules (listed there): the same images, concepts and ground truth
  in training, trainer validation and here. Categories sharing a prompt are one concept.
* **Cases.** 2D: one (image, concept) pair per concept with a mask on the image; ``include_absent``
  also asks for every concept of the split without any annotation on the image (empty ground
  truth). 3D: one (volume, label value) pair per entry of the label-to-prompt mapping present in the
  label map, absent ones likewise only with ``include_absent``. An image the reader rejected
  (missing file, unknown size) is a failed case.
* **Ground truth.** 2D: union of the concept's masks on the image (crowd regions included; box-only
  annotations have none, so a concept present only through them is not evaluated there). 3D:
  ``label_map == value``; the label map must share the image volume's shape and affine.
* **Prompts.** A category's ``prompt`` field overrides its ``name``; in 3D the mapping's text.
* **Protocols.** ``text``: the prompt alone. ``text+box``: the prompt plus the box of the *largest
  connected component* of the ground truth (``scipy.ndimage.label``, face connectivity, ties -> first
  in scan order), xyxy in pixels with exclusive right/bottom edges (a one-pixel component at
  (r, c) gives ``[c, r, c+1, r+1]``). 2D: per image; 3D: per slice, and slices whose ground truth is
  empty (and absent cases) get text only.
* **Prediction.** All detections of the prompt above the threshold (after NMS), unioned into one
  semantic mask. A threshold sweep runs the model *once* per case, keeping detections above the
  lowest threshold, and derives every threshold's mask from them: greedy NMS keeps the same
  detections above ``t`` whether it ran before or after the cut, so this equals separate runs.
  Weights that record one threshold per concept are scored at each concept's own
  (``EvalOptions.per_concept_thresholds``), as inference applies them. With ``largest_component`` /
  ``fill_holes`` each 3D prediction is cleaned as ``infer_sam.py`` cleans it, then saved and scored.
* **Metrics.** :func:`medsam3.evaluation.metrics.compute_all` (Dice, IoU, NSD at ``nsd_tolerance`` mm, HD95):
  3D on the whole volume with the file's voxel spacing; 2D with the image's pixel spacing when the
  file carries one (DICOM), else 1 mm per pixel. Absent cases score 1 when nothing is predicted and
  0 otherwise in ``per_case.csv``, but summaries average over *present* cases only; absent ones give
  the ``false_positive_rate`` (a non-empty prediction).
* **One headline number** (:func:`concept_means`, also what trainer validation and
  ``scripts/demo_tables.py`` report): Dice per present (case, concept), averaged per concept, then
  over concepts.
* **Failures.** A case that cannot be read or whose label map does not match is logged, listed in
  ``failures`` and skipped; the others still count.

Layout: :mod:`.metrics` (Dice, IoU, NSD, HD95; a leaf that imports nothing from medsam3),
:mod:`.cases` (options, cases, ground truth), :mod:`.protocol` (prompting, scoring, the loop),
:mod:`.report` (summaries and files). May import inference, io and outputs; never train or cli.
"""

from .cases import (
    CSV_COLUMNS,
    METRICS,
    PROTOCOLS,
    CaseError,
    CocoSet,
    EvalOptions,
    EvaluationError,
    ImageCase,
    VolumeCase,
    VolumeSet,
    coco_set,
    load_coco_set,
    load_label_prompts,
    match_volume_dirs,
    read_label_map,
    read_volume_pairs,
)

# The protocol runs the model (torch) and the report needs the metrics (scipy): imported on first
# use, so that checking a data set description (cases, above) answers before they load.
_PROTOCOL_NAMES = ("EvaluationReport", "Evaluator", "coco_instance_metrics", "largest_component_box", "semantic_masks")
_REPORT_NAMES = ("best_thresholds", "concept_means", "format_table", "summarize_rows", "write_report")


def __getattr__(name: str):
    if name in _PROTOCOL_NAMES:
        from . import protocol

        return getattr(protocol, name)
    if name in _REPORT_NAMES:
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CSV_COLUMNS",
    "METRICS",
    "PROTOCOLS",
    "CaseError",
    "CocoSet",
    "EvalOptions",
    "EvaluationError",
    "EvaluationReport",
    "Evaluator",
    "ImageCase",
    "VolumeCase",
    "VolumeSet",
    "best_thresholds",
    "coco_instance_metrics",
    "coco_set",
    "concept_means",
    "format_table",
    "largest_component_box",
    "load_coco_set",
    "load_label_prompts",
    "match_volume_dirs",
    "read_label_map",
    "read_volume_pairs",
    "semantic_masks",
    "summarize_rows",
    "write_report",
]
