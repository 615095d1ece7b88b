"""The comparison in the paper's regime on `tiny` (issue 35), one seed per call, resumable:

    python dev/regime_run.py --seed 0 [--depth 4] [--rl-steps 96]

Scarce forward CoT (1/8 of training pairs, the base model's own right answers), VM-CPT on that subset with its
policy, CoT SFT as LoRA r = 8 merged before RL, RL on every training pair with equal prompts per rollout batch for
GRPO, GRPO-2G and PoRo, each batch updated in two optimizer steps (the clip acts). Writes runs/regime/N{d}_s{seed}.
"""
import argparse
import time

import torch

from mpi_kit.tasks.clevr.data import PAPER_REGIME
from mpi_kit.pipeline import PipelineConfig, run_pipeline, table

METHODS = ("In-Context", "CoT SFT", "CoT SFT + GRPO", "TriMPI w/ GRPO-2G", "TriMPI w/ PoRo-GRPO")


def config(seed: int, depth: int, rl_steps: int, out: str, num_scenes: int = 260, cpt_steps: int = 60,
           sft_steps: int = 65) -> PipelineConfig:
    return PipelineConfig(
        out=out, depths=(depth,), methods=METHODS, seed=seed, num_policies=4, num_scenes=num_scenes, **PAPER_REGIME,
        cpt_steps=cpt_steps, sft_steps=sft_steps, rl_steps=rl_steps, eval_limit=200, side_limit=100, forgetting=False,
        overrides={"sft_cot.lora_r": 8, "sft_cot.learning_rate": 2e-3, "grpo.learning_rate": 5e-5, "grpo.beta": 0.0,
                   "grpo.rollout_prompts": 4, "grpo.updates_per_rollout": 2})


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--rl-steps", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-scenes", type=int, default=260)
    p.add_argument("--cpt-steps", type=int, default=60)
    p.add_argument("--sft-steps", type=int, default=65)
    p.add_argument("--out", default=None, help="default runs/regime/N{depth}_s{seed}")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t = time.time()
    out = a.out or f"runs/regime/N{a.depth}_s{a.seed}"
    res = run_pipeline(config(a.seed, a.depth, a.rl_steps, out, a.num_scenes, a.cpt_steps, a.sft_steps))
    print(table(res))
    print(f"{time.time() - t:.0f} s")
