"""Runs the cases of a dataset folder (:mod:`.dataset_folder`) through the predictor and scores them."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..inference.postprocess3d import largest_component_flags
from ..io import ImageReadError, Volume, save_label_map
from ..io.nnunet import DatasetCase, read_case_image, read_case_labels
from .cases import CaseError, EvaluationError
from .dataset_folder import FolderCases
from .protocol import EvaluationReport, Evaluator, _slug_unique, semantic_masks

__all__ = ["DatasetFolderEvaluator"]

logger = logging.getLogger(__name__)


class DatasetFolderEvaluator(Evaluator):
    """:class:`Evaluator` rows and files for the cases of a dataset folder."""

    def evaluate_case(self, folder: FolderCases, case: DatasetCase) -> list[dict]:
        opts = self.options
        image = read_case_image(folder.dataset, case, folder.channel, opts.window)
        labels = read_case_labels(folder.dataset, case, image)
        gts = [concept.mask(labels) for concept in folder.dataset.concepts]
        chosen = [j for j, gt in enumerate(gts) if gt.any() or opts.include_absent]
        if not chosen:
            logger.warning("%s: no concept occurs in %s; nothing to evaluate", case.name, case.label)
            return []
        is_volume = isinstance(image, Volume)
        spacing = image.spacing if is_volume else (1.0, 1.0)
        modality = (image.modality if is_volume else image.meta.get("modality")) or ("3D" if is_volume else "2D")
        slug = self._case_slug(case)
        source = case.images[min(folder.channel, len(case.images) - 1)]
        used: set[str] = set()
        concept_slugs = {j: _slug_unique(folder.prompts[j], used) for j in chosen}
        keep = largest_component_flags(opts.largest_component, folder.prompts)
        prompts = {j: folder.prompts[j] for j in chosen}
        if is_volume:  # one model pass for every threshold (the volume-set path's)
            preds = self.volume_masks(
                image,
                prompts,
                {j: gts[j] for j in chosen},
                largest={folder.prompts[j] for j in chosen if keep[j]},
                description=case.name,
            )
        else:
            (dets,) = self.predictor.predict_images(
                [image.rgb], list(prompts.values()), threshold=opts.keep_threshold, nms_iou=opts.nms_iou
            )
            preds = {
                ("text", j, t): mask
                for j, det in zip(chosen, dets)
                for t, mask in semantic_masks(det, opts.thresholds).items()
                if self.reports(folder.prompts[j], t)
            }
        rows = []
        for t in opts.thresholds:
            for j in chosen:
                pred = preds.get(("text", j, t))
                if pred is None:  # per-concept thresholds: only the concept's own
                    continue
                concept = folder.dataset.concepts[j]
                suffix = ".nii.gz" if is_volume else ".png"
                path = self._prediction_path("text", t, slug, concept_slugs[j], suffix)
                if is_volume:
                    save_label_map(pred.astype(np.uint8), image, path, dtype=np.uint8)
                else:
                    Image.fromarray(pred.astype(np.uint8) * 255).save(path)
                extra = {"image": str(source), "label": ",".join(map(str, concept.values)), "category_id": ""}
                row = self._row(case.name, modality, folder.prompts[j], "text", t, pred, gts[j], spacing, path, **extra)
                rows.append(row)
        return rows

    def run_folder(self, folder: FolderCases) -> EvaluationReport:
        """Every case; a failing one is logged and listed in ``failures``, never fatal."""
        if self.options.protocols != ("text",):
            raise EvaluationError("a dataset folder is evaluated with --protocol text only")
        self._check_cleanup(None if folder.dataset.is_2d else list(folder.prompts))
        report = EvaluationReport(options=self.options)
        report.n_cases = len(folder.cases)
        for case in tqdm(folder.cases, desc="evaluating", unit="case", disable=None):
            try:
                report.rows += self.evaluate_case(folder, case)
            except (CaseError, ImageReadError, OSError, ValueError, MemoryError, torch.cuda.OutOfMemoryError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                logger.error("case %s failed: %s", case.name, reason)
                report.failures.append({"case": case.name, "path": str(case.images[0]), "reason": reason})
        return report
