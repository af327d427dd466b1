"""The Gradio page: upload, prompts, boxes, sliders, result, downloads; every action calls :mod:`.service`.

Handlers turn a user's mistake (a file that is not an image, a 4D NIfTI without a volume index,
an empty prompt, a malformed box) into a message in the page's status line and keep serving;
anything else propagates, so Gradio shows it as an error and logs the traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from ..adapters.concepts import DEMO_DIR
from ..errors import UserError
from .service import (
    WINDOW_CHOICES,
    AppService,
    ImageResult,
    Upload,
    VolumeResult,
    box_corners,
    draw_boxes,
    parse_boxes,
    parse_prompts,
)

__all__ = ["PageHandlers", "build_ui", "example_files"]

logger = logging.getLogger(__name__)

USER_ERRORS = (UserError,)  # only "fix your input" is shown as such; anything else is a bug and propagates
DETECTION_HEADERS = ["prompt", "#", "score", "area (px)", "area (mm²)"]
VOLUME_HEADERS = ["prompt", "label", "detections", "slices", "voxels", "volume (ml)"]
INTRO = """# MedSAM3: text-prompted segmentation
Upload an image (PNG/JPEG/TIFF), a DICOM file, a zipped DICOM series or a NIfTI volume, type what to
segment (several concepts: separate them with commas) and press **Run**. Click two corners on the image
to add an exemplar box. On 2D images, threshold and NMS re-filter the last result without running the model
again; a volume is segmented again with **Run**."""


def example_files() -> list[str]:
    """The example scans shipped with the demo model, if installed."""
    folder = DEMO_DIR / "examples"
    if not folder.is_dir():
        return []
    return [
        str(p)
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and "label" not in p.name  # ground truth beside the scans, not something to segment
        and p.suffix.lower() not in (".json", ".md", ".txt")
    ]


def _error(exc: BaseException, upload_dir: Path | None = None) -> str:
    """The message for the status line: one line; an upload's server-side folder left out."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if upload_dir is not None:
        message = message.replace(f"{upload_dir}/", "")
    return f"**Error:** {message}"


def _volume_index(value: str | None) -> int | None:
    text = (value or "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise UserError(f"volume index {text!r}: give a whole number >= 0 (which volume of a 4D NIfTI)")
    return int(text)


class PageHandlers:
    """What each control of the page does: functions of the per-session state and the inputs.

    The page passes its state (the upload, the last result, a clicked corner) in and takes it
    back; the shared model and caches live in ``service``. ``scripts/bench_app.py`` times these.
    """

    def __init__(self, service: AppService):
        self.service = service

    def open_upload(self, file, window, volume_index):
        blank = (None, None, None, gr.update(visible=False, value=0, maximum=1), None, [], None)
        if not file:
            return (*blank, "", "")
        try:
            upload = self.service.open(file, window, _volume_index(volume_index))
        except USER_ERRORS as exc:
            logger.warning("upload %s: %s", Path(file).name, exc)
            return (*blank, "", _error(exc, Path(file).parent))
        slider = gr.update(visible=False, value=0, maximum=1)
        if upload.kind == "volume":
            middle = upload.n_slices // 2
            slider = gr.update(visible=True, value=middle, maximum=upload.n_slices - 1, minimum=0, step=1)
            picture = self.redraw(upload, "", middle)
        else:
            picture = self.redraw(upload, "", 0)
        return upload, None, picture, slider, None, [], None, upload.describe(), ""

    def redraw(self, upload: Upload | None, boxes_text, slice_index, corner=None):
        if upload is None:
            return None
        try:
            boxes = parse_boxes(boxes_text)
        except ValueError:
            boxes = []  # the status line reports a malformed box when Run is pressed
        return draw_boxes(upload.picture(int(slice_index or 0)), boxes, corner, upload.preview_factor)

    def click(self, evt: gr.SelectData, upload, corner, boxes_text, mode, slice_index):
        if upload is None:
            return None, boxes_text, None, "upload an image first"
        x, y = (float(v) / upload.preview_factor for v in evt.index)  # picture pixels -> image pixels
        if corner is None:
            return (x, y), boxes_text, self.redraw(upload, boxes_text, slice_index, (x, y)), "click the opposite corner"
        try:
            box = box_corners(tuple(corner), (x, y), positive=mode == "positive")
            boxes_text = "\n".join(line for line in [(boxes_text or "").strip(), box.line()] if line)
            status = f"added a {mode} box: {box.line()[2:]}"
        except ValueError as exc:
            status = _error(exc)
        return None, boxes_text, self.redraw(upload, boxes_text, slice_index), status

    def show_image_result(self, upload: Upload, result: ImageResult, status: str):
        files = self.service.write_image_outputs(upload, result)
        found = sum(len(d) for d in result.results)
        table = gr.update(value=self.service.detection_rows(upload, result), headers=DETECTION_HEADERS)
        return (
            result,
            str(files[0]),
            table,
            [str(f) for f in files],
            _warned(result.warnings, f"{found} detection(s). {status}"),
        )

    def run(self, upload, prompts_text, boxes_text, threshold, nms_iou, slice_index, per_concept=False):
        if upload is None:
            return None, None, [], None, "**Error:** upload an image or a volume first (or pick an example)"
        try:
            prompts = parse_prompts(prompts_text)
            boxes = parse_boxes(boxes_text)
            if upload.kind == "image":
                result = self.service.segment_image(
                    upload, prompts, boxes, float(threshold), float(nms_iou), bool(per_concept)
                )
                return self.show_image_result(upload, result, result.timing())
            result = self.service.segment_volume(
                upload, prompts, boxes, float(threshold), float(nms_iou), bool(per_concept)
            )
        except USER_ERRORS as exc:
            logger.warning("run on %s: %s", upload.name, exc)
            return None, None, [], None, _error(exc)
        table = gr.update(value=self.service.volume_rows(result), headers=VOLUME_HEADERS)
        overlay = self.service.volume_overlay(upload, result, int(slice_index or 0))
        status = f"{len(prompts)} prompt(s) on {upload.n_slices} slices in {result.seconds:.2f} s"
        return result, overlay, table, [str(f) for f in result.files], _warned(result.warnings, status)

    def refilter(self, upload, result, threshold, nms_iou, per_concept=False):
        if upload is None or result is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if isinstance(result, VolumeResult):
            note = "press **Run** to apply the new threshold / NMS to the whole volume"
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), note
        try:
            new = self.service.refilter(upload, result, float(threshold), float(nms_iou), bool(per_concept))
        except USER_ERRORS as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), _error(exc)
        return self.show_image_result(
            upload, new, f"re-filtered without the model in {new.prompt_seconds * 1000:.0f} ms"
        )

    def set_threshold(self, upload, result, threshold, nms_iou):
        """The slider moved: it now applies to every prompt (as --threshold does), so the per-concept box clears."""
        return (*self.refilter(upload, result, threshold, nms_iou, False), False)

    def move_slice(self, upload, result, slice_index, boxes_text):
        picture = self.redraw(upload, boxes_text, slice_index)
        if isinstance(result, VolumeResult):
            return picture, self.service.volume_overlay(upload, result, int(slice_index))
        return picture, gr.skip()


def _warned(warnings: list[str], status: str) -> str:
    """The status line with the run's warnings (unknown concepts) in front, as the CLI logs them."""
    return "".join(f"**Warning:** {w}\n\n" for w in warnings) + status


def build_ui(service: AppService) -> gr.Blocks:
    """The page, wired to ``service``; the caller queues and launches it."""
    h = PageHandlers(service)
    # -- layout ------------------------------------------------------------------------------------
    with gr.Blocks(title="MedSAM3") as demo:
        upload_state = gr.State(None)
        result_state = gr.State(None)
        corner_state = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                file_in = gr.File(label="Image or volume", elem_id="upload")
                examples = example_files()
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[file_in], label="Bundled examples")
                with gr.Row():
                    window = gr.Dropdown(WINDOW_CHOICES, value="auto", label="Intensity window", elem_id="window")
                    volume_index = gr.Textbox(
                        "", label="Volume index (4D NIfTI)", placeholder="0, 1, ...", elem_id="volume_index"
                    )
                info = gr.Markdown("", elem_id="info")
                prompts = gr.Textbox(
                    label="Concepts (comma-separated)", placeholder="liver, spleen", lines=1, elem_id="prompts"
                )
                with gr.Row():
                    box_mode = gr.Radio(["positive", "negative"], value="positive", label="Next box", elem_id="mode")
                    clear = gr.Button("Clear boxes", size="sm")
                boxes = gr.Textbox(
                    label="Exemplar boxes: + x1 y1 x2 y2 (positive) / - x1 y1 x2 y2 (negative)",
                    lines=2,
                    elem_id="boxes",
                )
                threshold = gr.Slider(
                    0, 1, value=service.default_threshold, step=0.01, label="Score threshold", elem_id="threshold"
                )
                per_concept = gr.Checkbox(
                    value=service.records_concept_thresholds,
                    visible=service.records_concept_thresholds,
                    label="Each concept at the threshold the weights record for it (as infer_sam.py); "
                    "moving the slider applies its value to every concept",
                    elem_id="per_concept",
                )
                nms_iou = gr.Slider(0.05, 1, value=0.5, step=0.05, label="NMS IoU (1 = off)", elem_id="nms")
                run_button = gr.Button("Run", variant="primary", elem_id="run")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=3):
                picture = gr.Image(
                    label="Input (click two corners to add a box)",
                    interactive=False,
                    format="png",
                    elem_id="picture",
                )
                slice_slider = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice")
                overlay = gr.Image(label="Result", interactive=False, format="png", elem_id="overlay")
                table = gr.Dataframe(headers=DETECTION_HEADERS, label="Detections", interactive=False, elem_id="table")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")

        upload_outputs = [upload_state, result_state, picture, slice_slider, overlay, table, downloads, info, status]
        for trigger in (file_in.change, window.input, volume_index.submit):
            trigger(h.open_upload, [file_in, window, volume_index], upload_outputs)
        picture.select(
            h.click,
            [upload_state, corner_state, boxes, box_mode, slice_slider],
            [corner_state, boxes, picture, status],
        )
        clear.click(lambda: ("", None), None, [boxes, corner_state]).then(
            h.redraw, [upload_state, boxes, slice_slider], [picture]
        )
        boxes.blur(h.redraw, [upload_state, boxes, slice_slider], [picture])
        result_outputs = [result_state, overlay, table, downloads, status]
        run_inputs = [upload_state, prompts, boxes, threshold, nms_iou, slice_slider, per_concept]
        run_button.click(h.run, run_inputs, result_outputs)
        prompts.submit(h.run, run_inputs, result_outputs)
        filter_inputs = [upload_state, result_state, threshold, nms_iou]
        threshold.input(h.set_threshold, filter_inputs, [*result_outputs, per_concept], trigger_mode="always_last")
        for control in (nms_iou, per_concept):
            control.input(h.refilter, [*filter_inputs, per_concept], result_outputs, trigger_mode="always_last")
        slice_slider.input(
            h.move_slice,
            [upload_state, result_state, slice_slider, boxes],
            [picture, overlay],
            trigger_mode="always_last",
        )
    return demo
