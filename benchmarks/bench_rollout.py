"""Rollout speed against the hardware (not a test): new tokens/s of plain `generate`, of the shared-prefill path
(`mpi_kit.rollout`) and of the decode loop (`mpi_kit.decode`) side by side, the compute floor of each shape, and a
GRPO (G), a GRPO-2G and a PoRo (G + G) step on the same prompts (PoRo also as the issue found it, shared-prefill
rollouts and TRL's training forward, and on the decode loop with TRL's training forward: each piece's share).

    python benchmarks/bench_rollout.py [--quick] [--json FILE] [--batches 8 32 128] [--depths 2 4 6]
                                       [--new-tokens 48] [--steps 3] [--reps 2]

Shapes: a batch of B rows is B / 2G policy-aware prompts (the policy of depth N in context), each repeated 2G times
as the RL trainer does (G = 4), every row decoding exactly --new-tokens tokens (min_new_tokens = max) sampled as the
tiny recipe does (temperature 0.7, vision tokens suppressed). A path's prefill time is a call with one new token;
its decode time is a full call minus that, over B x (new tokens - 1) decoded tokens.

Floor (stated per run): FLOPs per decoded token = 2 x (language weights used per token: the 4 attention and 3 MLP
projections of every layer, plus lm_head) + 4 x layers x hidden x context (q.K and p.V over the prompt plus half the
completion); the floor of a decode step is B tokens x those FLOPs over the fp32 matmul rate measured in this run
(the sustained rate of (B x hidden) @ (hidden x mlp) products, the decode step's biggest matmul shape, measured
between the timed calls: the median; column GF/s). "floor W" divides the same FLOPs by the rate of the model's own
language weight matmuls run in sequence at batch B (all of them, as a step streams them through the caches). The
prefill floor counts each unique prompt once (2 x language weights + causal attention per token, plus 2 x vision
weights per image patch) over the rate of a (512 x hidden) @ (hidden x mlp) product. Ratios are measured in one
process, paths interleaved (each path's fastest of --reps calls), so a busy machine slows all alike; the load
average is printed with each row.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rl import one_step, prepare  # noqa: E402

from mpi_kit.tasks.clevr.data import DataConfig, build_datasets  # noqa: E402
from mpi_kit.data import load_kit_data, with_policy
from mpi_kit.decode import decode_generate  # noqa: E402
from mpi_kit.models import vision_token_ids  # noqa: E402
from mpi_kit.recipes import get_recipe  # noqa: E402
from mpi_kit.rollout import shared_prefill_generate  # noqa: E402
from mpi_kit.training import tiny_or_random  # noqa: E402

G = 4
PATHS = ("generate", "shared", "decode")


def load_data(work: Path, depth: int, recipe):
    out = work / f"data-N{depth}"
    if not (out / "rl").exists():
        build_datasets(DataConfig(out=str(out), num_policies=2, num_scenes=24, depth=depth,
                                  image_size=tuple(recipe.render_size), kinds=("rl", "cot", "vmcpt")), progress=False)
    return out


def policy_batch(processor, rows, B: int) -> dict:
    """B rows: B / 2G policy-aware prompts, each repeated 2G times, tokenized and left-padded like TRL's."""
    from trl.data_utils import prepare_multimodal_messages

    texts, images = [], []
    for i in range(max(1, B // (2 * G))):
        r = rows[i % len(rows)]
        prompt = with_policy(r["prompt"], r["policy"] or [])
        imgs = list(r.get("policy_images") or []) + list(r["images"])
        text = processor.apply_chat_template(prepare_multimodal_messages(prompt, images=imgs),
                                             add_generation_prompt=True)
        texts += [text] * (2 * G)
        images += [imgs] * (2 * G)
    texts, images = texts[:B], images[:B]
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True))


def gen_kwargs(processor, T: int) -> dict:
    tok = getattr(processor, "tokenizer", processor)
    return dict(max_new_tokens=T, min_new_tokens=T, do_sample=True, temperature=0.7, top_p=1.0, top_k=0,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                suppress_tokens=vision_token_ids(processor))


def run_path(model, path: str, batch: dict, kw: dict) -> float:
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.no_grad():
        if path == "generate":
            model.generate(**batch, **kw)
        elif path == "shared":
            shared_prefill_generate(model, **batch, **kw)
        else:
            decode_generate(model, **batch, **kw)
    return time.perf_counter() - t


def matmul_rate(m: int, k: int, n: int, seconds: float = 0.25) -> float:
    """fp32 FLOP/s of (m x k) @ (k x n) products repeated for about `seconds` on this machine, now (a sustained
    rate, so that it shares the load of the moment as the timed calls do)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.matmul(a, b)
    count, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(10):
            torch.matmul(a, b)
        count += 10
    return 2 * m * k * n * count / (time.perf_counter() - t)


def weights_rate(model, m: int, seconds: float = 0.25) -> float:
    """fp32 FLOP/s of the model's own language weight matmuls at batch m, run in sequence as a decode step does
    (so the rate includes streaming ~4M weights through the caches, which one small matmul never does)."""
    text = model.model.language_model
    weights = [p for layer in text.layers for n, p in layer.named_parameters()
               if n.endswith("weight") and "layernorm" not in n] + [model.lm_head.weight]
    inputs = {w.shape[1]: torch.randn(m, w.shape[1]) for w in weights}
    flops = 2 * m * sum(w.numel() for w in weights)
    count, t = 0, time.perf_counter()
    with torch.no_grad():
        while time.perf_counter() - t < seconds:
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            count += 1
    return flops * count / (time.perf_counter() - t)


def model_flops(model):
    """(language weights per token, layers, hidden, vision weights): FLOP inputs of the floor."""
    text = model.model.language_model
    per_layer = sum(p.numel() for n, p in text.layers[0].named_parameters() if n.endswith("weight")
                    and "layernorm" not in n)
    head = model.lm_head.weight.numel()
    vision = sum(p.numel() for p in model.model.visual.parameters() if p.dim() == 2)
    return per_layer * len(text.layers) + head, len(text.layers), text.config.hidden_size, vision


def bench_rollouts(model, processor, work, recipe, depths, batches, T, reps):
    weights, layers, hidden, vision = model_flops(model)
    inter = model.config.get_text_config().intermediate_size
    rows_out = []
    for depth in depths:
        rows = load_data(work, depth, recipe)
        rl_rows = list(load_kit_data(rows, "rl")["train"])
        for B in batches:
            batch = policy_batch(processor, rl_rows, B)
            kw = gen_kwargs(processor, T)
            one = {**kw, "max_new_tokens": 1, "min_new_tokens": 1}
            full, first = {p: [] for p in PATHS}, {p: [] for p in PATHS}
            rates, rates_prefill, rates_weights = [], [], []
            for p in PATHS:  # warm up
                run_path(model, p, batch, one)
            for _ in range(reps):
                for p in PATHS:  # interleaved, the matmul rate measured between them
                    first[p].append(run_path(model, p, batch, one))
                    full[p].append(run_path(model, p, batch, kw))
                    rates.append(matmul_rate(B, hidden, inter))
                    rates_weights.append(weights_rate(model, B))
                    rates_prefill.append(matmul_rate(512, hidden, inter))
            rate, rate_prefill = statistics.median(rates), statistics.median(rates_prefill)
            real = batch["attention_mask"].sum(1).float()
            ctx = float(real.mean()) + T / 2
            per_token = 2 * weights + 4 * layers * hidden * ctx
            floor_step = B * per_token / rate
            uniq = real[::2 * G][: max(1, B // (2 * G))]
            patches = int(batch["image_grid_thw"].prod(-1).sum()) // B * len(uniq)
            prefill_flops = float(sum(2 * weights * n + 2 * layers * hidden * n * n for n in uniq.tolist()))
            prefill_flops += 2 * vision * patches
            rate_w = statistics.median(rates_weights)
            res = {"N": depth, "B": B, "prompt_len": round(float(real.mean()), 1), "T": T, "load": os.getloadavg()[0],
                   "matmul_gflops": rate / 1e9, "floor_step_ms": 1e3 * floor_step,
                   "weights_gflops": rate_w / 1e9, "floor_weights_step_ms": 1e3 * B * per_token / rate_w,
                   "prefill_floor_s": prefill_flops / rate_prefill}
            for p in PATHS:
                pre = min(first[p])
                dec = max(min(full[p]) - pre, 1e-9)
                res[p] = {"prefill_s": pre, "decode_step_ms": 1e3 * dec / (T - 1),
                          "decode_tok_s": B * (T - 1) / dec, "tok_s": B * T / min(full[p])}
            rows_out.append(res)
            print_row(res, flush=True)
    return rows_out


def print_header():
    print(f"{'N':>2} {'B':>4} {'prompt':>6} | {'new tokens/s (decode only)':^32} | {'decode ms/step':^26} | "
          f"{'floor':>7} {'decode/':>7} {'GF/s':>5} {'floor W':>7} {'dec/W':>5} {'GF/s':>4} | {'prefill s':^23} "
          f"{'floor':>6} | load")
    print(f"{'':>2} {'':>4} {'tokens':>6} | {'generate':>10} {'shared':>10} {'decode':>10} | "
          f"{'generate':>8} {'shared':>8} {'decode':>8} | {'ms/step':>7} {'floor':>7} {'':>5} {'ms/step':>7} "
          f"{'':>5} {'':>4} | "
          f"{'generate':>7} {'shared':>7} {'decode':>7} {'s':>6} |")


def print_row(r, flush=False):
    g, s, d = r["generate"], r["shared"], r["decode"]
    ratio = d["decode_step_ms"] / r["floor_step_ms"]
    ratio_w = d["decode_step_ms"] / r["floor_weights_step_ms"]
    print(f"{r['N']:>2} {r['B']:>4} {r['prompt_len']:>6.0f} | {g['decode_tok_s']:>10.0f} {s['decode_tok_s']:>10.0f} "
          f"{d['decode_tok_s']:>10.0f} | {g['decode_step_ms']:>8.1f} {s['decode_step_ms']:>8.1f} "
          f"{d['decode_step_ms']:>8.1f} | {r['floor_step_ms']:>7.2f} {ratio:>7.2f} {r['matmul_gflops']:>5.0f} "
          f"{r['floor_weights_step_ms']:>7.2f} {ratio_w:>5.2f} {r['weights_gflops']:>4.0f} | "
          f"{g['prefill_s']:>7.2f} {s['prefill_s']:>7.2f} {d['prefill_s']:>7.2f} {r['prefill_floor_s']:>6.2f} | "
          f"{r['load']:.1f}", flush=flush)


def bench_steps(recipe, data, work, T, steps):
    """Median seconds of full RL steps (rollouts + scoring + loss + backward + optimizer), variants interleaved."""
    from mpi_kit.rl import rl_trainer

    common = {"max_steps": steps + 1, "grpo.per_device_train_batch_size": 2 * G, "grpo.max_completion_length": T}
    specs = {
        "PoRo G+G, shared (before)": (True, G, "shared"),
        "PoRo G+G, decode, TRL forward": (True, G, "decode"),
        "PoRo G+G, decode": (True, G, "decode"),
        "GRPO-2G, decode": (False, 2 * G, "decode"),
        "GRPO G, decode": (False, G, "decode"),
    }
    trainers = {}
    for name, (poro, n, path) in specs.items():
        kw = dict(common)
        if not poro and n == G:
            kw["grpo.per_device_train_batch_size"] = G  # one prompt per step, G completions
        trainers[name] = rl_trainer(recipe, data, work / name.replace(" ", "_").replace(",", ""), "grpo", poro,
                                    num_generations=n, fast_rollouts=path, **kw)[0]
    trainers["PoRo G+G, decode, TRL forward"].shared_prompt_logps = False  # the decode loop alone
    for t in trainers.values():
        t.generation_config.min_new_tokens = T
        t.generation_kwargs["min_new_tokens"] = T
    batches = {k: prepare(t, steps + 1) for k, t in trainers.items()}
    times = {k: [] for k in trainers}
    for step in range(steps + 1):
        for name, t in trainers.items():
            dt = one_step(t, batches[name])
            if step:
                times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N = 4 at batch 32 and 128, 2 RL steps per variant")
    ap.add_argument("--json", default=None, help="write the ratios and the table here")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 6])
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3, help="measured RL steps per variant (after one warmup)")
    ap.add_argument("--reps", type=int, default=2, help="timed calls per path and shape (the fastest counts)")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    if args.quick:
        args.depths, args.batches, args.steps = [4], [32, 128], 2
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-rollout-"))
    recipe = get_recipe("tiny")
    data4 = load_data(work, 4, recipe)
    recipe = tiny_or_random(recipe, data4, work / "base")
    from mpi_kit.models import load_model

    model, processor = load_model(recipe.model)
    model.eval()
    print(f"model {recipe.model}, fp32 CPU, {threads} thread(s); G = {G}, groups of 2G = {2 * G} rows per prompt; "
          f"{args.new_tokens} new tokens per row, sampled (temperature 0.7); load at start "
          f"{os.getloadavg()[0]:.1f}")
    print_header()
    table = bench_rollouts(model, processor, work, recipe, args.depths, args.batches, args.new_tokens, args.reps)
    steps = bench_steps(recipe, data4, work, args.new_tokens, args.steps)
    print(f"\nRL steps (tiny, N = 4, one prompt per step, {args.new_tokens} tokens per completion, medians of "
          f"{args.steps} interleaved steps; load {os.getloadavg()[0]:.1f}):")
    for k, v in steps.items():
        print(f"  {k:42s} {v:6.2f} s")
    key = [r for r in table if r["N"] == 4 and r["B"] in (32, 128)] or table
    ratios = {
        "speedup_vs_generate": min(r["decode"]["decode_tok_s"] / r["generate"]["decode_tok_s"] for r in key),
        "floor_ratio": max(r["decode"]["decode_step_ms"] / r["floor_step_ms"] for r in key),
        "floor_ratio_weights": max(r["decode"]["decode_step_ms"] / r["floor_weights_step_ms"] for r in key),
        "prefill_floor_ratio": max(r["decode"]["prefill_s"] / r["prefill_floor_s"] for r in key),
        "step_speedup": steps["PoRo G+G, shared (before)"] / steps["PoRo G+G, decode"],
        "poro_over_grpo2g": steps["PoRo G+G, decode"] / steps["GRPO-2G, decode"],
    }
    print(f"(of the step speedup, the decode loop alone: "
          f"{steps['PoRo G+G, shared (before)'] / steps['PoRo G+G, decode, TRL forward']:.2f}x)")
    print("\n" + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()) +
          "  (targets: >= 5, <= 2.5, <= 2, >= 2.5, <= 1.15; worst of N = 4 at B = 32/128)")
    if args.json:
        Path(args.json).write_text(json.dumps({**ratios, "table": table, "steps_s": steps,
                                               "threads": threads, "load_end": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
