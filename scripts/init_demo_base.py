#!/usr/bin/env python
"""Write the randomly initialised small SAM3 that stage 1 of the demo trains from scratch.

Same architecture as SAM3 (transformers ``Sam3Model``), scaled down so a CPU trains it: ``--hidden``
channels, a few layers per part, ``--resolution`` px. The tokenizer is CLIP's real BPE vocabulary
(49,408 tokens), read from the ``open_clip_torch`` wheel (``pip download --no-deps``; cached), so
words never seen in training still split into meaningful sub-words instead of bytes.

Initialisation: every ``nn.Linear`` gets PyTorch's default (Kaiming-uniform) init instead of
transformers' ``normal(std=0.02)``. At std 0.02 a 64-wide network's three-layer heads output ~1e-4
and the presence/class scores barely depend on the prompt, so the text side learns too slowly and
one concept can collapse (never detected) while another learns; see scripts/DATA.md / MODEL.md.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from transformers import CLIPTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor
from transformers.convert_slow_tokenizer import bytes_to_unicode

OPEN_CLIP = "open_clip_torch==3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
TEXT_CONTEXT = 32  # Sam3Processor pads prompts to 32 tokens


def fetch_bpe(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "bpe_simple_vocab_16e6.txt.gz"
    if target.exists():
        return target
    wheels = sorted(cache.glob("open_clip_torch-3.3.0-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(cache)]
        subprocess.run(cmd + [OPEN_CLIP], check=True)
        wheels = sorted(cache.glob("open_clip_torch-3.3.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        target.write_bytes(z.read(BPE_MEMBER))
    return target


def clip_tokenizer(bpe_path: Path) -> CLIPTokenizer:
    """CLIP's tokenizer exactly as open_clip builds it (byte vocab, 48,894 merges, 2 special tokens)."""
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab_list)}, merges=merges)


def demo_sam3_config(tokenizer: CLIPTokenizer, resolution: int, hidden: int, vision_layers: int) -> Sam3Config:
    grid = resolution // 14
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=hidden,
                intermediate_size=4 * hidden,
                num_hidden_layers=vision_layers,
                num_attention_heads=4,
                image_size=resolution,
                patch_size=14,
                window_size=grid // 2,
                global_attn_indexes=list(range(vision_layers // 2 - 1, vision_layers, vision_layers // 2)),
                pretrain_image_size=resolution,
            ),
            fpn_hidden_size=hidden,
            backbone_feature_sizes=[[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
        ),
        text_config=dict(
            model_type="clip_text_model",
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            projection_dim=hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TEXT_CONTEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        geometry_encoder_config=dict(
            hidden_size=hidden, num_layers=1, num_attention_heads=4, intermediate_size=2 * hidden, roi_size=3
        ),
        detr_encoder_config=dict(hidden_size=hidden, num_layers=2, num_attention_heads=4, intermediate_size=4 * hidden),
        detr_decoder_config=dict(
            hidden_size=hidden, num_layers=3, num_queries=16, num_attention_heads=4, intermediate_size=4 * hidden
        ),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=4),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--resolution", type=int, default=168)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=["pytorch", "transformers"], default="pytorch")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "medsam3" / "demo_sources")
    args = p.parse_args(argv)
    tokenizer = clip_tokenizer(fetch_bpe(args.cache_dir))
    config = demo_sam3_config(tokenizer, args.resolution, args.hidden, args.vision_layers)
    config.image_size = args.resolution
    torch.manual_seed(args.seed)
    model = Sam3Model(config)
    if args.init == "pytorch":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
    model.eval().save_pretrained(args.out)
    size = {"height": args.resolution, "width": args.resolution}
    Sam3Processor(image_processor=Sam3ImageProcessor(size=size), tokenizer=tokenizer).save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"random demo SAM3 ({n / 1e6:.2f}M parameters, {args.resolution} px, hidden {args.hidden}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
