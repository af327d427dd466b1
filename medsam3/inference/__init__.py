"""Pixels to masks: the :class:`~.predictor.Predictor` (image embedded once, many prompts),
post-processing (scores, NMS, masks at full size in :mod:`.postprocess`; 3D clean-up in
:mod:`.postprocess3d`), volumes slice by slice (:mod:`.volume`) and many inputs (:mod:`.batch`).

May import: adapters, model, config, and the leaves io and outputs. Never train, evaluation or cli.
Modules are imported one by one (``from medsam3.inference.predictor import Predictor``) so that
light parts such as :mod:`.postprocess3d` do not pull in transformers.
"""
