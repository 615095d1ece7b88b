"""One consumer GPU, measured: fast rollouts vs plain `generate`, PoRo vs GRPO step time, and each stage's peak
memory next to the memory planner's prediction, for the Qwen2.5-VL-3B-shaped config with random weights.

    python benchmarks/bench_gpu.py                # real 3B shapes (a GPU; on a CPU this takes very long)
    python benchmarks/bench_gpu.py --reduced      # small shapes, runs on a CPU in under a minute (tested)
    python benchmarks/bench_gpu.py --json out.json

On a GPU the 3B-shaped model is loaded like the qwen2.5-vl-3b recipe (NF4, LoRA r=16, checkpointing, bf16); peaks
are `torch.cuda.max_memory_allocated`, the planner's prediction excludes its fixed CUDA overhead. On a CPU
(--reduced) compute is fp32 and peaks come from `memory_harness.measure_peak` (allocator events via torch.profiler).
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
    from bench_stages import random_weights  # same init as the 3B-shaped VM-CPT benchmark
    random_weights(model)
    model.save_pretrained(folder)
    ip = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=256 * 28 * 28, patch_size=14, merge_size=2)
    Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                        chat_template=chat_template()).save_pretrained(folder)
    return str(folder)


def _time(fn, reps: int = 1) -> float:
    import torch

    best = float("inf")
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def decode_ms(model, size: dict) -> dict:
    """ms per decode step, ours (shared prefill; static cache + compile on CUDA) vs plain `generate`, from the
    time of N new tokens minus the time of 1 (the prefill), same prompts, same run; plus greedy token agreement."""
    import torch

    from memory_harness import synthetic_inputs
    from mpi_kit.rollout import shared_prefill_generate

    dev = next(model.parameters()).device
    b, n = size["decode_batch"], size["decode_tokens"]
    x = synthetic_inputs(model.config, 1, size["image_tokens"] + size["query_tokens"], size["image_tokens"])
    x = {k: (v.repeat(b, 1) if k == "pixel_values" else v.repeat_interleave(b, 0)).to(dev) for k, v in x.items()}
    model.eval()
    out = {}
    for name, gen in (("plain", lambda **kw: model.generate(**x, **kw)),
                      ("ours", lambda **kw: shared_prefill_generate(model, **x, **kw))):
        def run(k):
            with torch.no_grad():
                return gen(max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0)
        run(n)  # warmup (and the compile on CUDA)
        full, one = _time(lambda: run(n), 2), _time(lambda: run(1), 2)
        out[name] = {"ms_per_step": round(1000 * (full - one) / (n - 1), 3), "tokens": run(n)[:, -n:].tolist()}
    same = out["plain"].pop("tokens") == out["ours"].pop("tokens")
    return {"batch": b, "new_tokens": n, "plain_ms": out["plain"]["ms_per_step"],
            "ours_ms": out["ours"]["ms_per_step"],
            "speedup": round(out["plain"]["ms_per_step"] / max(out["ours"]["ms_per_step"], 1e-9), 2),
            "greedy_tokens_equal": same}


def memory_rows(model, recipe, size: dict) -> list[dict]:
    """Each stage's measured peak next to the planner's prediction (excluding its fixed CUDA overhead)."""
    from memory_harness import measure_peak, run_stage
    from mpi_kit.memory import GIB, Workload, model_config, model_shape, predict

    w = Workload(size["policy_tokens"], size["image_tokens"], size["query_tokens"], size["completion_tokens"],
                 size["G"], True)
    shape = model_shape(model_config(recipe))
    rows = []
    for stage, mb in (("vm_cpt", 1), ("sft", 2), ("rl_generation", 4 * size["G"]), ("rl_update", 2)):
        with measure_peak() as m:
            run_stage(model, stage, mb, w, generation_batch=mb)
        pred = sum(predict(recipe, stage, mb, w, shape, generation_batch=mb).values())
        rows.append({"stage": stage, "micro_batch": mb, "tokens": w.sequence(stage), "measured_gib": round(m.gib, 4),
                     "predicted_gib": round(pred / GIB, 4), "ratio": round(pred / m.bytes, 3)})
    return rows


def rl_steps(path: str, work: Path, size: dict, precision: str) -> dict:
    """A PoRo G+G step vs a GRPO 2G step, interleaved like benchmarks/bench_rl.py (same helpers)."""
    import torch

    from bench_rl import one_step, prepare
    from mpi_kit.tasks.clevr.data import DataConfig, build_datasets
    from mpi_kit.rl import rl_trainer

    G = size["G"]
    data = work / "data"
    if not (data / "rl").exists():
        build_datasets(DataConfig(out=str(data), num_policies=1, num_scenes=3, depth=2, image_size=(112, 84),
                                  kinds=("rl",)), progress=False)
    total = size["rl_steps"] + 1
    common = dict(model=path, precision=precision, max_steps=total, memory_budget_gib=0.0, max_pixels=16 * 28 * 28,
                  min_pixels=4 * 28 * 28, **{"grpo.per_device_train_batch_size": 2 * G,
                                             "grpo.gradient_accumulation_steps": 1,
                                             "grpo.max_completion_length": size["rl_completion"]})
    variants = {
        "grpo": rl_trainer("qwen2.5-vl-3b", data, work / "grpo", "grpo", False, num_generations=2 * G, **common)[0],
        "poro": rl_trainer("qwen2.5-vl-3b", data, work / "poro", "grpo", True, num_generations=G, **common)[0],
    }
    batches = {k: prepare(t, total) for k, t in variants.items()}
    times = {k: [] for k in variants}
    torch.manual_seed(0)
    for step in range(total):
        for k, t in variants.items():
            dt = one_step(t, batches[k])
            if step:
                times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"G": G, "completions_per_step": 2 * G, "grpo_step_s": round(med["grpo"], 3),
            "poro_step_s": round(med["poro"], 3), "poro_over_grpo": round(med["poro"] / med["grpo"], 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reduced", action="store_true", help="small shapes (CPU, tests)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--skip-rl", action="store_true", help="skip the PoRo vs GRPO trainer steps")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp16"), default="auto",
                    help="GPU precision: auto = what the recipe resolves on this card (bf16 on compute capability "
                         ">= 8, fp16 below); run once with fp16 and once with bf16 to compare (fp32 on a CPU)")
    args = ap.parse_args(argv)
    import torch

    from mpi_kit.models import load_model
    from mpi_kit.recipes import get_recipe

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    mode = "reduced" if args.reduced else "full"
    size = SIZES[mode]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_gpu_"))
    path = build_checkpoint(work / f"qwen2.5-vl-3b-shaped-{mode}", REDUCED if args.reduced else FULL)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from mpi_kit.models import resolve_precision

    precision = resolve_precision(args.precision, device) if device == "cuda" else "fp32"
    recipe = get_recipe("qwen2.5-vl-3b", model=path, precision=precision, device=device)
    model, _ = load_model(recipe)
    res = {"mode": mode, "device": device, "precision": precision, "torch": torch.__version__,
           "decode": decode_ms(model, size), "memory": memory_rows(model, recipe, size)}
    del model
    if not args.skip_rl:
        res["rl_step"] = rl_steps(path, work, size, precision)
    print(f"Qwen2.5-VL-3B-shaped ({mode}), {device}, {precision}")
    d = res["decode"]
    print(f"decode, batch {d['batch']}: plain generate {d['plain_ms']:.2f} ms/step, ours {d['ours_ms']:.2f} ms/step "
          f"(x{d['speedup']}), greedy tokens equal: {d['greedy_tokens_equal']}")
    if "rl_step" in res:
        r = res["rl_step"]
        print(f"RL step, {r['completions_per_step']} completions: GRPO {r['grpo_step_s']:.2f} s, PoRo G+G "
              f"{r['poro_step_s']:.2f} s, ratio {r['poro_over_grpo']:.2f} (target <= 1.3)")
    print(f"{'stage':<14}{'micro':>6}{'tokens':>8}{'measured GiB':>14}{'predicted GiB':>15}{'pred/meas':>10}")
    for r in res["memory"]:
        print(f"{r['stage']:<14}{r['micro_batch']:>6}{r['tokens']:>8}{r['measured_gib']:>14.4f}"
              f"{r['predicted_gib']:>15.4f}{r['ratio']:>10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
