"""One consumer GPU, measured: fast rollouts vs plain `generate`, PoRo vs GRPO step time, and each stage's peak
memory next to the memory planner's prediction, for the Qwen2.5-VL-3B-shaped config with random weights.

    python benchmarks/bench_gpu.py                # real 3B shapes (a GPU; on a CPU this takes very long)
    python benchmarks/bench_gpu.py --reduced      # small shapes, runs on a CPU in under a minute (tested)
    python benchmarks/bench_gpu.py --json out.json

On a GPU the 3B-shaped model is loaded like the qwen2.5-vl-3b recipe (NF4, LoRA r=16, checkpointing, bf16); peaks
are `torch.cuda.max_memory_allocated`, the planner's prediction excludes its fixed CUDA overhead. On a CPU
(--reduced) compute is fp32 and peaks come from `mpi_kit.memory.measure_peak` (allocator events via torch.profiler).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mpi_kit.memory import KNOWN_CONFIGS  # noqa: E402

FULL = KNOWN_CONFIGS["Qwen/Qwen2.5-VL-3B-Instruct"]
# Same architecture, small sizes: a 3B-like ratio of MLP to hidden, GQA 4:1 heads, a vocab large enough for the
# logits to matter.
REDUCED = dict(text=dict(vocab_size=8192, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
               vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
                           out_hidden_size=128, in_chans=3), tie_word_embeddings=True)
SIZES = {  # workload of each mode: real (the reference) and reduced (CPU)
    "full": dict(policy_tokens=2000, image_tokens=204, query_tokens=100, completion_tokens=256, G=4,
                 decode_batch=8, decode_tokens=64, rl_steps=3, rl_completion=128),
    "reduced": dict(policy_tokens=96, image_tokens=16, query_tokens=24, completion_tokens=16, G=2,
                    decode_batch=4, decode_tokens=8, rl_steps=1, rl_completion=8),
}


def build_checkpoint(folder, shape: dict, seed: int = 0) -> str:
    """Save a Qwen2.5-VL checkpoint of `shape` with random weights (bf16 for the full size) and a processor whose
    BPE tokenizer is trained on a little kit text (Qwen's special tokens). Returns the folder."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from mpi_kit.tiny import chat_template, train_tokenizer

    folder = Path(folder)
    if (folder / "config.json").exists():
        return str(folder)
    texts = ["Is there a red metal cube left of the blue sphere? Policy: if the scene holds a cube, answer A. "
             "<think>The scene has a cube.</think><answer>A</answer>"] * 8
    tok = train_tokenizer(texts, vocab_size=512)
    ids = tok.convert_tokens_to_ids
    rope = {"rope_type": "default", "rope_theta": 1e6,
            "mrope_section": [16, 24, 24] if shape["text"]["hidden_size"] >= 1024 else [4, 6, 6]}
    cfg = Qwen2_5_VLConfig(text_config=dict(shape["text"], rope_parameters=rope, max_position_embeddings=32768,
                                             bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                                             pad_token_id=ids("<|endoftext|>")),
                           vision_config=shape["vision"], tie_word_embeddings=shape["tie_word_embeddings"],
                           image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                           vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(seed)
    big = shape["text"]["hidden_size"] >= 1024
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16 if big else torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("ln_q.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0, 0.02)
    model.save_pretrained(folder)
    ip = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=256 * 28 * 28, patch_size=14, merge_size=2)
    Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                        chat_template=chat_template()).save_pretrained(folder)
    return str(folder)
