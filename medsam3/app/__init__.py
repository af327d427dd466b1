"""The local web app (``medsam3-app``, ``python -m medsam3.app``): SAM3 + LoRA in a browser.

A top layer, like :mod:`medsam3.cli` and independent of it: it may import everything below it
(``inference``, ``adapters``, ``model``, ``config``, the leaves ``io`` and ``outputs``); nothing
in medsam3 imports it. Gradio is an optional extra (``pip install -e ".[app]"``) and is imported
only by :mod:`.ui` and :mod:`.main`.

- :mod:`.service`: everything the page does, without Gradio: read an upload, segment it with the
  :class:`~medsam3.inference.predictor.Predictor` (image embedding cached per image, raw outputs
  cached per prompt so threshold and NMS re-filter without the model), write the same files
  ``infer_sam.py`` writes. The browser test and ``scripts/bench_app.py`` drive it.
- :mod:`.ui`: the Gradio page wired to the service.
- :mod:`.main`: the command line (``--config/--weights/--device/--set`` as ``infer_sam.py``).
"""
