"""Steps/s and peak memory of each training stage on the tiny recipe, side by side; and, with --3b, the peak memory
of one VM-CPT step for a Qwen2.5-VL-3B-shaped model (real sizes, random weights, 4-bit NF4 + LoRA, gradient
checkpointing, as the `qwen2.5-vl-3b` recipe) on one N=6 ClevrPolicy-T sequence, on this machine's CPU or GPU.

    python benchmarks/bench_stages.py                 # tiny: VM-CPT, CoT SFT, Direct SFT (minutes on 2 cores)
    python benchmarks/bench_stages.py --3b            # + the 3B-shaped step (minutes, ~10 GB RAM and disk)

Each measurement runs in a fresh process, so peak RSS (ru_maxrss never resets) belongs to that stage alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _tiny_stage(stage: str, data: str, out: str, steps: int) -> dict:
    import torch
    from transformers import TrainerCallback

    from mpi_kit.cpt import run_cpt
    from mpi_kit.sft import run_sft
    from mpi_kit.training import tiny_or_random

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    recipe = tiny_or_random("tiny", data, out=str(Path(data).parent / "tiny-random"))
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    kw = dict(max_steps=steps, save_steps=10_000, callbacks=[Clock()])
    if stage == "vm_cpt":
        s = run_cpt(recipe, data, out, **kw)
    else:
        s = run_sft(recipe, data, out, stage.split("_")[1], **kw)
    steady = (len(times) - 2) / (times[-1] - times[1]) if len(times) > 3 else s["steps_per_second"]
    return {"stage": stage, "steps": s["steps"], "steps_per_s": round(steady, 3),
            "examples_per_s": round(steady * recipe.vm_cpt.per_device_train_batch_size, 2),
            "peak_rss_gib": s["peak_memory_gib"], "trainable": s["params"]["trainable"],
            "first_loss": s["loss"][0]["loss"], "last_loss": s["final_loss"], "model": recipe.model}


QWEN25_VL_3B = dict(
    text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
              num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
              tie_word_embeddings=True,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", in_chans=3))


def random_weights(model) -> None:
    """Initialise a model built on the meta device (`to_empty`): norms 1, biases 0, every other weight N(0, 0.02)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("ln_q.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0, 0.02)


def _build_3b(folder: Path, texts: list[str]) -> None:
    """A Qwen2.5-VL-3B-shaped checkpoint with random bf16 weights and a BPE tokenizer trained on our texts
    (Qwen's special tokens; the 151,936-row embedding is kept at full size)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, \
        Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from mpi_kit.tiny import chat_template, train_tokenizer

    tok = train_tokenizer(texts, vocab_size=4096)
    ids = tok.convert_tokens_to_ids
    cfg = Qwen2_5_VLConfig(text_config=dict(QWEN25_VL_3B["text"], bos_token_id=ids("<|endoftext|>"),
                                             eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
                           vision_config=QWEN25_VL_3B["vision"], tie_word_embeddings=True,
                           image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                           vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    random_weights(model)
    model.save_pretrained(folder)
    ip = Qwen2VLImageProcessor(min_pixels=64 * 28 * 28, max_pixels=256 * 28 * 28, patch_size=14, merge_size=2)
    vp = Qwen2VLVideoProcessor(patch_size=14, merge_size=2)
    Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                        chat_template=chat_template()).save_pretrained(folder)


def _prepare_3b(work: Path):
    """(an N=6 VM-CPT row, the 3B-shaped checkpoint folder), built once under `work`."""
    from mpi_kit.tasks.clevr.data import build_datasets
    from mpi_kit.data import load_kit_data

    data = work / "data"
    if not (data / "vmcpt").exists():
        build_datasets(out=str(data), num_policies=1, num_scenes=4, depth=6, image_size=(480, 320),
                       kinds=("vmcpt",), progress=False)
    row = load_kit_data(str(data), "vmcpt")["train"][0]
    folder = work / "qwen2.5-vl-3b-shaped"
    if not (folder / "config.json").exists():
        texts = ["".join(p["text"] or "" for m in row["prompt"] + row["completion"] for p in m["content"])] * 8
        _build_3b(folder, texts)
    return row, folder


def _step_3b(work: str) -> dict:
    """Peak memory of one VM-CPT optimizer step (forward, backward, AdamW on the adapter) for the 3B shape.
    Build the checkpoint first in another process (stage "build3b"): the peak RSS of a process never resets, and
    building the random bf16 model would otherwise count."""
    import torch

    from mpi_kit.cpt import VMCPTCollator
    from mpi_kit.models import count_parameters, load_model, peak_memory

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    work = Path(work)
    row, folder = _prepare_3b(work)
    # the qwen2.5-vl-3b recipe (NF4, LoRA r=16 on the language model, gradient checkpointing), on this device
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_model("qwen2.5-vl-3b", model=str(folder), device=device,
                                  precision="bf16" if device == "cuda" else "fp32")
    after_load = peak_memory()
    batch = VMCPTCollator(processor)([row])
    n_tokens = batch["input_ids"].shape[1]
    n_text = int((batch["labels"] != -100).sum())
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    t0 = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    return {"device": device, "sequence_tokens": n_tokens, "text_tokens_with_loss": n_text,
            "image_tokens": n_tokens - n_text, "policy_chars": len(row["policy"][0]["text"]),
            "step_seconds": round(time.perf_counter() - t0, 1), "loss": round(float(loss), 3),
            "peak_after_load_gib": round(after_load, 2), "peak_step_gib": round(peak_memory(), 2),
            "params": count_parameters(model),
            "note": "CPU: peak RSS of the process (fp32 compute, NF4 weights); GPU: torch max_memory_allocated"}


def _child(args) -> None:
    if args.stage == "build3b":
        res = {"built": str(_prepare_3b(Path(args.out))[1])}
    elif args.stage == "3b":
        res = _step_3b(args.out)
    else:
        res = _tiny_stage(args.stage, args.data, args.out, args.steps)
    print("RESULT " + json.dumps(res))


def _spawn(*argv) -> dict:
    # glibc: big blocks straight from mmap and back to the OS when freed. With the defaults the 3B-shaped step's
    # process was OOM-killed at 22.4 GiB RSS on a 24 GiB machine (freed blocks kept); with these it peaked at 14.6.
    env = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "2", **os.environ,
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, __file__, "--child", *argv], env=env, capture_output=True, text=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode or not line:
        raise SystemExit(f"{argv} failed:\n{r.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per tiny stage (default 12)")
    ap.add_argument("--depth", type=int, default=4, help="policy depth N of the tiny data (default 4)")
    ap.add_argument("--3b", dest="b3", action="store_true", help="also the 3B-shaped NF4 + LoRA VM-CPT step")
    ap.add_argument("--only-3b", action="store_true", help="only the 3B-shaped step")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_stages_"))
    if not args.only_3b:
        from mpi_kit.tasks.clevr.data import build_datasets
        from mpi_kit.recipes import get_recipe

        data = work / "data"
        if not (data / "summary.json").exists():
            build_datasets(out=str(data), num_policies=2, num_scenes=40, depth=args.depth,
                           image_size=tuple(get_recipe("tiny").render_size), progress=False)
        rows = []
        for stage in ("vm_cpt", "sft_cot", "sft_direct"):
            rows.append(_spawn("--stage", stage, "--data", str(data), "--out", str(work / stage),
                               "--steps", str(args.steps)))
        print(f"\ntiny recipe (batch {get_recipe('tiny').vm_cpt.per_device_train_batch_size}, N={args.depth}, "
              f"{args.steps} steps, model {rows[0]['model']}):")
        print(f"{'stage':<12}{'steps/s':>9}{'ex/s':>8}{'peak RSS GiB':>14}{'trainable':>12}{'loss':>16}")
        for r in rows:
            print(f"{r['stage']:<12}{r['steps_per_s']:>9.3f}{r['examples_per_s']:>8.2f}{r['peak_rss_gib']:>14.2f}"
                  f"{r['trainable']:>12,}{r['first_loss']:>8.2f}->{r['last_loss']:.2f}")
    if args.b3 or args.only_3b:
        _spawn("--stage", "build3b", "--out", str(work / "3b"))  # its own process: see _step_3b
        res = _spawn("--stage", "3b", "--out", str(work / "3b"))
        print("\nQwen2.5-VL-3B-shaped VM-CPT step (NF4 + LoRA r=16, gradient checkpointing, N=6 -T policy):")
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
