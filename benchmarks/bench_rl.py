"""PolicyRollout's cost (not a test): step time of PoRo-GRPO (G no-policy + G policy-aware) over plain GRPO with 2G
completions per prompt, the same number of completions per step, measured side by side in one process (steps
interleaved A, B, A, B, ... so a busy machine slows both alike), and the peak memory of each.

    python benchmarks/bench_rl.py [--steps 6] [--recipe tiny] [--G 4] [--depth 4] [--fixed-length 48]
                                  [--fast-rollouts recipe|on|off] [--policy-microbatch K]

PoRo costs more because its policy-aware half decodes with the whole policy document in its KV cache (and, in the
default one-call generation, the no-policy half is left-padded to the same length). `--fast-rollouts` (default: the
recipe's setting, on for tiny) is what keeps that extra small; `--fixed-length` makes both variants decode the same
number of tokens, so the ratio is PoRo's own cost rather than a difference in what the model chose to write.
Peak memory: CUDA max allocated per variant on a GPU; on a CPU, the peak RSS growth above the
process's resident size at the start of each step (sampled every 5 ms), after a warmup step.
"""
import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from mpi_kit.tasks.clevr.data import DataConfig, build_datasets
from mpi_kit.recipes import get_recipe
from mpi_kit.rl import rl_trainer
from mpi_kit.training import tiny_or_random


class PeakRSS:
    """Peak resident-set growth (GiB) while the block runs, sampled by a thread; CUDA peak allocation on a GPU."""

    def __init__(self):
        self.peak = 0.0

    def __enter__(self):
        self.proc, self.stop = psutil.Process(), False
        self.base = self.proc.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop:
            self.peak = max(self.peak, (self.proc.memory_info().rss - self.base) / 2**30)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated() / 2**30


def prepare(trainer, steps):
    """What Trainer.train sets up before its loop: optimizer, scheduler, the prompt loader."""
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return iter(trainer.get_train_dataloader())


def one_step(trainer, batches) -> float:
    """Generate + score + loss + backward + optimizer step for one batch of prompts; seconds."""
    t = time.perf_counter()
    trainer.training_step(trainer.model, next(batches), None)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="measured steps per variant (after 1 warmup step)")
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--G", type=int, default=4, help="PoRo samples G + G; GRPO samples 2G")
    ap.add_argument("--depth", type=int, default=4, help="policy depth N (longer policies: longer PoRo prompts)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--fast-rollouts", choices=("recipe", "on", "off"), default="recipe", help="both variants "
                    "generate through mpi_kit.rollout (one prefill per prompt group, grouped decoding attention, a "
                    "static cache for long prompts); default: the recipe's `fast_rollouts` (on for tiny)")
    ap.add_argument("--policy-microbatch", type=int, default=None, help="PoRo: generate the policy-aware half "
                    "separately, in chunks of this many prompts (default: one call for both halves)")
    ap.add_argument("--fixed-length", type=int, default=None, help="every completion exactly this many tokens "
                    "(min_new_tokens = max): the same decode work in both variants, so the ratio is PoRo's own cost")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(0)

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-rl-"))
    recipe = get_recipe(args.recipe)
    build_datasets(DataConfig(out=str(work / "data"), num_policies=2, num_scenes=40, depth=args.depth,
                              image_size=tuple(recipe.render_size), kinds=("rl", "cot", "vmcpt")), progress=False)
    recipe = tiny_or_random(recipe, work / "data", work / "base")
    G = args.G
    total = args.steps + 1
    fast = {"recipe": None, "on": True, "off": False}[args.fast_rollouts]
    common = dict(max_steps=total, fast_rollouts=fast, **{"grpo.per_device_train_batch_size": 2 * G})
    if args.fixed_length:
        common["grpo.max_completion_length"] = args.fixed_length
    variants = {
        "GRPO (2G)": rl_trainer(recipe, work / "data", work / "grpo", "grpo", False, num_generations=2 * G,
                                **common)[0],
        "PoRo (G+G)": rl_trainer(recipe, work / "data", work / "poro", "grpo", True, num_generations=G,
                                   policy_microbatch=args.policy_microbatch, **common)[0],
    }
    if args.fixed_length:
        for t in variants.values():
            t.generation_config.min_new_tokens = args.fixed_length
            if getattr(t, "generation_kwargs", None) is not None:
                t.generation_kwargs["min_new_tokens"] = args.fixed_length
    batches = {k: prepare(t, total) for k, t in variants.items()}
    times = {k: [] for k in variants}
    peaks = {k: 0.0 for k in variants}
    for step in range(total):
        for name, trainer in variants.items():
            with PeakRSS() as mem:
                dt = one_step(trainer, batches[name])
            if step > 0:  # the first step warms up kernels, caches and the allocator
                times[name].append(dt)
                peaks[name] = max(peaks[name], mem.peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    lens = {k: statistics.mean(t._metrics["train"]["completions/mean_length"]) for k, t in variants.items()}
    device = "cuda" if torch.cuda.is_available() and recipe.device != "cpu" else "cpu"
    print(f"recipe {recipe.name} ({recipe.model}), device {device}, N = {args.depth}, G = {G}, "
          f"{2 * G} completions per step, {args.steps} steps each, interleaved; "
          f"fast_rollouts={variants['PoRo (G+G)'].fast_rollouts}, "
          f"policy_microbatch={args.policy_microbatch}, fixed_length={args.fixed_length}")
    for k in variants:
        print(f"{k:11s} median step {med[k]:6.2f} s  (min {min(times[k]):.2f}, max {max(times[k]):.2f})  "
              f"mean completion length {lens[k]:.1f}  peak memory {peaks[k]:.3f} GiB")
    poro, grpo = "PoRo (G+G)", "GRPO (2G)"
    print(f"PoRo / GRPO step time: {med[poro] / med[grpo]:.2f} (target <= 1.3)")
    # sampled lengths differ (the policy-aware half often writes a full CoT): the same ratio per generated token
    per_token = (med[poro] / lens[poro]) / (med[grpo] / lens[grpo])
    print(f"PoRo / GRPO step time per mean completion token: {per_token:.2f}")


if __name__ == "__main__":
    main()
