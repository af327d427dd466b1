"""A tiny random SAM3 checkpoint (same architecture, ~0.3M parameters) for tests and benchmarks.

The hub is unreachable in tests and CI, so they build this, ``save_pretrained`` it with a
processor and a small CLIP tokenizer, and load it through the same code path as a real
checkpoint (``model.name: <dir>``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers load inside the functions: `python -m medsam3.testing --help` is instant
    from transformers import CLIPTokenizer, Sam3Config, Sam3Model, Sam3Processor

__all__ = [
    "TINY_RESOLUTION",
    "build_tiny_checkpoint",
    "build_tiny_video_checkpoint",
    "random_sam3",
    "random_sam3_video",
    "tiny_sam3_config",
    "tiny_sam3_video_config",
    "tiny_tokenizer",
]

TINY_RESOLUTION = 112
_TEXT_CONTEXT = 32  # Sam3Processor pads prompts to 32 tokens


def tiny_sam3_config(resolution: int = TINY_RESOLUTION, hidden: int = 32, vocab_size: int = 1024) -> Sam3Config:
    """SAM3 with every part present but 1-2 layers and ``hidden`` channels."""
    from transformers import Sam3Config

    grid = resolution // 14
    tokenizer = tiny_tokenizer()
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=resolution,
                patch_size=14,
                window_size=grid // 2,
                global_attn_indexes=[1],
                pretrain_image_size=resolution,
            ),
            fpn_hidden_size=hidden,
            backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
        ),
        text_config=dict(
            model_type="clip_text_model",
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            projection_dim=hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=_TEXT_CONTEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        geometry_encoder_config=dict(
            hidden_size=hidden, num_layers=1, num_attention_heads=2, intermediate_size=2 * hidden, roi_size=3
        ),
        detr_encoder_config=dict(hidden_size=hidden, num_layers=1, num_attention_heads=2, intermediate_size=2 * hidden),
        detr_decoder_config=dict(
            hidden_size=hidden, num_layers=2, num_queries=16, num_attention_heads=2, intermediate_size=2 * hidden
        ),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2),
    )


def tiny_tokenizer(words: tuple[str, ...] = ("liver", "tumor", "lesion", "kidney", "spleen")) -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer with whole-word merges for a few medical words."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = sorted(set(bytes_to_unicode().values()))
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words:
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0, resolution: int = TINY_RESOLUTION) -> Path:
    """Write a loadable tiny SAM3 checkpoint + processor to ``out_dir`` and return it."""
    import torch
    from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    config = tiny_sam3_config(resolution)
    torch.manual_seed(seed)
    model = Sam3Model(config).eval()
    model.save_pretrained(out_dir)
    image_processor = Sam3ImageProcessor(size={"height": resolution, "width": resolution})
    processor = Sam3Processor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    return out_dir


def random_sam3(size: str = "tiny", resolution: int | None = None, seed: int = 0) -> tuple[Sam3Model, Sam3Processor]:
    """A SAM3 with random weights, ``"tiny"`` or ``"full"`` (SAM3's own architecture), for benchmarks.

    Timing and memory depend on the architecture and resolution, not on the weights, so the
    full-size model measures what the released checkpoint would cost without the hub.
    """
    import torch
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    res = resolution or (TINY_RESOLUTION if size == "tiny" else 1008)
    config = tiny_sam3_config(res) if size == "tiny" else Sam3Config()
    config.image_size = res
    torch.manual_seed(seed)
    model = Sam3Model(config).eval()
    processor = Sam3Processor(Sam3ImageProcessor(size={"height": res, "width": res}), tiny_tokenizer())
    return model, processor


def tiny_sam3_video_config(resolution: int = TINY_RESOLUTION, hidden: int = 128, num_queries: int = 4):
    """SAM3's video model (detector + tracker) scaled down like :func:`tiny_sam3_config`.

    transformers' tracker needs ``hidden`` above its 64-channel memory (it splits object pointers
    into 64-wide tokens), hence 128 here rather than the image model's 32.
    """
    from transformers import Sam3TrackerVideoConfig, Sam3VideoConfig

    detector = tiny_sam3_config(resolution, hidden=hidden)
    detector.detr_decoder_config.num_queries = num_queries
    tracker = Sam3TrackerVideoConfig(
        vision_config=detector.vision_config.to_dict(),
        prompt_encoder_config=dict(hidden_size=hidden, image_size=resolution, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=hidden, mlp_dim=2 * hidden, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=2 * hidden,
        memory_encoder_hidden_size=hidden,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=2 * hidden,
        image_size=resolution,
    )
    config = Sam3VideoConfig(detector_config=detector.to_dict(), tracker_config=tracker.to_dict())
    config.image_size = resolution
    return config


def build_tiny_video_checkpoint(out_dir: str | Path, seed: int = 0, resolution: int = TINY_RESOLUTION) -> Path:
    """Write a loadable tiny SAM3 *video* checkpoint (detector + tracker) + processor to ``out_dir``.

    Like facebook/sam3 it also loads as an image model: ``Sam3Model.from_pretrained`` takes the
    detector (``detector_model.*`` weights) from it, so image and video paths share one checkpoint.
    """
    import torch
    from transformers import Sam2VideoVideoProcessor, Sam3ImageProcessor, Sam3VideoModel, Sam3VideoProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    Sam3VideoModel(tiny_sam3_video_config(resolution)).eval().save_pretrained(out_dir)
    image_processor = Sam3ImageProcessor(size={"height": resolution, "width": resolution})
    video_processor = Sam2VideoVideoProcessor(
        size={"height": resolution, "width": resolution},
        image_mean=image_processor.image_mean,
        image_std=image_processor.image_std,
    )
    Sam3VideoProcessor(image_processor, video_processor, tiny_tokenizer()).save_pretrained(out_dir)
    return out_dir


def random_sam3_video(size: str = "tiny", resolution: int | None = None, seed: int = 0):
    """A SAM3 video model with random weights, ``"tiny"`` or ``"full"`` (SAM3's own architecture), and its processor."""
    import torch
    from transformers import (
        Sam2VideoVideoProcessor,
        Sam3ImageProcessor,
        Sam3VideoConfig,
        Sam3VideoModel,
        Sam3VideoProcessor,
    )

    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    res = resolution or (TINY_RESOLUTION if size == "tiny" else 1008)
    config = tiny_sam3_video_config(res) if size == "tiny" else Sam3VideoConfig()
    config.image_size = res
    torch.manual_seed(seed)
    model = Sam3VideoModel(config).eval()
    image_processor = Sam3ImageProcessor(size={"height": res, "width": res})
    video_processor = Sam2VideoVideoProcessor(
        size={"height": res, "width": res}, image_mean=image_processor.image_mean, image_std=image_processor.image_std
    )
    return model, Sam3VideoProcessor(image_processor, video_processor, tiny_tokenizer())


def _demo_image(path: Path) -> Path:
    """A synthetic grayscale 'scan' (bright organ-like ellipse, dark lesion) for smoke runs."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[:256, :320]
    img = np.full((256, 320), 60, np.uint8)
    img[((yy - 128) / 90) ** 2 + ((xx - 150) / 120) ** 2 < 1] = 150
    img[((yy - 110) / 20) ** 2 + ((xx - 190) / 25) ** 2 < 1] = 90
    Image.fromarray(img).save(path)
    return path


def _demo_frames(folder: Path, n_frames: int = 8) -> Path:
    """A synthetic 'cine': the organ-like ellipse drifting right, one PNG per frame."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:128, :160]
    for t in range(n_frames):
        img = np.full((128, 160), 60, np.uint8)
        img[((yy - 64) / 30) ** 2 + ((xx - 60 - 6 * t) / 40) ** 2 < 1] = 160
        Image.fromarray(img).save(folder / f"frame_{t:03d}.png")
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m medsam3.testing [DIR] [--video]``: a tiny random SAM3 to try the commands offline."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m medsam3.testing",
        description="Write a tiny random SAM3 checkpoint (+ a synthetic scan) to try medsam3's commands offline. "
        "Random weights: the masks mean nothing; use --weights demo for a trained model.",
    )
    parser.add_argument("dir", nargs="?", default="tiny_sam3", help="output folder (default tiny_sam3)")
    parser.add_argument(
        "--video",
        action="store_true",
        help="a tiny SAM3 *video* model (detector + tracker) and a folder of synthetic frames, for --video",
    )
    args = parser.parse_args(argv)
    target = Path(args.dir)
    if args.video:
        build_tiny_video_checkpoint(target)
        frames = _demo_frames(target / "frames")
        sys.stdout.write(
            f"tiny random SAM3 video checkpoint and {frames}/ written; try:\n"
            f"  python infer_sam.py --set model.name={target} --weights none --video {frames} --prompt liver "
            f"--output-dir {target}/tracked\n"
        )
        return 0
    build_tiny_checkpoint(target)
    _demo_image(target / "demo.png")
    sys.stdout.write(
        f"tiny random SAM3 checkpoint and demo.png written to {target}; try:\n"
        f"  python infer_sam.py --set model.name={target} --weights none --image {target}/demo.png --prompt liver\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
