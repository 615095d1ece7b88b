"""Writes notebooks/06_policy_rollout.ipynb (run: python tools/nb06.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nb import write  # noqa: E402

write("06_policy_rollout.ipynb", "06 · RL with PolicyRollout, and a rollout inspector", [
("markdown", """
TriMPI's last stage is RL on **non-CoT** data: the reward checks the answer, not the reasoning (paper §4.4).
GRPO samples G completions per prompt and pushes up the ones that beat their group's mean. When the policy is
complex and the model has not internalized it, every completion in a group is wrong, all rewards are equal,
and the group teaches nothing.

**PolicyRollout (PoRo)** samples G more completions *with the policy in context*. These are more likely to be
right, and they are pooled into the same group of 2G; then every completion is scored and trained as if it had
been written without the policy. The policy tokens never reach the loss.

This notebook trains both chains on the same data, then opens each run's rollouts one group at a time:
1. CoT SFT → GRPO (the baseline)
2. VM-CPT → CoT SFT → PoRo-GRPO (TriMPI)
"""),
("code", 'RECIPE = "tiny"'),
("code", """
import json
import pandas as pd
from IPython.display import display
from mpi_kit.recipes import get_recipe
from mpi_kit.data import DataConfig, build_datasets
from mpi_kit.training import tiny_or_random, loss_figure
from mpi_kit.cpt import run_cpt
from mpi_kit.sft import run_sft
from mpi_kit.rl import run_rl
from mpi_kit.models import load_model
from mpi_kit.evaluate import evaluate_accuracy
from mpi_kit.inspector import (ASSET_RUN, RolloutInspector, load_rollouts, rollout_figures, step_stats,
                               policy_rescues, outcome_figure)
recipe = get_recipe(RECIPE)
tiny = recipe.name == "tiny"
# tiny: N = 2 policies and a few steps per stage (minutes on a CPU); GPU recipes: N = 4 and the recipe's schedule
cfg = DataConfig(out="runs/nb06/data", num_policies=2, num_scenes=40 if tiny else 600, depth=2 if tiny else 4,
                 image_size=tuple(recipe.render_size), kinds=("vmcpt", "cot", "rl", "eval"))
build_datasets(cfg, progress=False)
recipe = tiny_or_random(recipe, cfg.out)  # the shipped tiny model, or a random stand-in if it is missing
STEPS = dict(cpt=6, sft=20, rl=3) if tiny else dict(cpt=None, sft=None, rl=None)  # None: the recipe's
SFT = {"sft_cot.per_device_train_batch_size": 4, "sft_cot.learning_rate": 1e-3} if tiny else {}
# an N = 2 CoT is ~48 tokens; the tiny model's CoT falls apart when sampled at temperature 1.0
RL = {"grpo.max_completion_length": 64, "grpo.temperature": 0.7} if tiny else {}
print("model:", recipe.model, "| G =", recipe.grpo.num_generations, "| steps:", STEPS)
"""),
("markdown", """
## 1. CoT SFT → GRPO
GRPO's group is G completions of the no-policy prompt (image + query).
"""),
("code", """
runs = "runs/nb06"
grpo_dir, poro_dir = f"{runs}/grpo", f"{runs}/poro_grpo"
sft = run_sft(recipe, cfg.out, f"{runs}/sft_cot", "cot", max_steps=STEPS["sft"], **SFT)
grpo = run_rl(recipe, cfg.out, grpo_dir, "grpo", policy_rollout=False, init=f"{runs}/sft_cot",
              max_steps=STEPS["rl"], **RL)
"""),
("markdown", """
## 2. TriMPI: VM-CPT → CoT SFT → PoRo-GRPO
Same RL settings, with `policy_rollout=True`: groups of G no-policy + G policy-aware completions.
"""),
("code", """
cpt = run_cpt(recipe, cfg.out, f"{runs}/vm_cpt", max_steps=STEPS["cpt"])
sft2 = run_sft(recipe, cfg.out, f"{runs}/cpt_sft_cot", "cot", init=f"{runs}/vm_cpt", max_steps=STEPS["sft"], **SFT)
poro = run_rl(recipe, cfg.out, poro_dir, "grpo", policy_rollout=True, init=f"{runs}/cpt_sft_cot",
              max_steps=STEPS["rl"], **RL)
keys = ("stage", "steps", "group_size", "seconds", "steps_per_second", "peak_memory_gib")
display(pd.DataFrame([{k: s.get(k) for k in keys} for s in (sft, grpo, cpt, sft2, poro)]))
loss_figure({"CoT SFT": sft, "VM-CPT": cpt, "CoT SFT after VM-CPT": sft2}, "supervised stages").show()
"""),
("markdown", """
## 3. The runs over steps
Each RL run logs every completion of every step to `completions/completions_*.parquet` (TRL's rollout log,
with PolicyRollout's columns: source, prompt id, scene, gold, parsed answer, length, truncated).
`step_stats` recomputes, from the groups, what matters: the reward, the **fraction of groups whose rewards are
all equal** (zero advantage, no gradient), format vs accuracy, and each half of PoRo's groups.
"""),
("code", """
logs = {"GRPO": load_rollouts(grpo_dir), "TriMPI (PoRo)": load_rollouts(poro_dir)}
for name, df in logs.items():
    print(name)
    display(step_stats(df)[["step", "groups", "reward_mean", "frac_zero_std", "format", "accuracy",
                            "reward_no_policy", "reward_policy_aware", "mean_length", "frac_truncated"]].round(3))
for fig in rollout_figures(logs["TriMPI (PoRo)"], "PoRo"):
    fig.show()
"""),
("markdown", """
## 4. Inspect the rollouts, one group at a time
The scene image with the policy's gold path, then the group's completions side by side (no-policy on top,
policy-aware below): reward, advantage (green bar: pushed up, red: pushed down), length, truncation, the parsed
answer against the gold one. Filters narrow the groups; the step slider follows one prompt through training
(tick *highlight changes* to see what changed since its first step). In the **reward playground**, edit a
completion or the gold answer: the kit's reward functions re-score it, and the advantage it would get in its
group is recomputed.
"""),
("code", "RolloutInspector(grpo_dir)"),
("code", "RolloutInspector(poro_dir)"),
("markdown", """
## 5. Where PolicyRollout supplied the reward
A group in which no no-policy completion is right but a policy-aware one is: plain GRPO would have had zero
accuracy reward there. With PoRo, that correct completion gets a positive advantage and is trained *on the
no-policy prompt*: the model is pushed towards the answer it could only find with the policy in view.
"""),
("code", """
poro_log = logs["TriMPI (PoRo)"]
rescued = policy_rescues(poro_log)
print(f"{len(rescued)} of {poro_log['group'].nunique()} PoRo groups got their accuracy reward only from the "
      f"policy-aware half")
display(rescued)
outcome_figure(poro_log, "PoRo groups: where the accuracy reward came from").show()
outcome_figure(logs["GRPO"], "GRPO groups (no policy-aware half)").show()
"""),
("markdown", """
## 6. Held-out scenes, no policy in the prompt
The test of internalization: image + query only, scenes never trained on. On `tiny` with a few steps, read it
as the pipeline working; the recipe parameter scales the same cells up.
"""),
("code", """
acc = {}
for name, folder in (("CoT SFT + GRPO", grpo_dir), ("TriMPI (VM-CPT + CoT SFT + PoRo-GRPO)", poro_dir)):
    model, processor = load_model(folder)
    rows = evaluate_accuracy(model, processor, cfg.out, "no_policy", limit=16 if tiny else None,
                             max_new_tokens=64 if tiny else 512)
    acc[name] = {"accuracy": sum(r["correct"] for r in rows) / len(rows), "n": len(rows)}
display(pd.DataFrame(acc).T)
"""),
("markdown", """
## A recorded run, for a machine without the time to train
With a few steps on `tiny`, the runs above may have earned no reward at all (every group zero-std): the first
thing the inspector shows you, and a common sight in early RL. The kit ships a longer-trained PoRo-GRPO run
(tiny model, more CoT SFT first; `assets/rollouts/summary.json` says how it was recorded, and
`mpi-kit inspect assets/rollouts --record` re-records it). The inspector needs no model:
"""),
("code", """
print(json.dumps(json.loads((ASSET_RUN / "summary.json").read_text())["recorded_with"], indent=1))
recorded = load_rollouts(ASSET_RUN)
display(policy_rescues(recorded))
outcome_figure(recorded, "recorded PoRo run: where the accuracy reward came from").show()
RolloutInspector(ASSET_RUN)
"""),
("markdown", """
The same from the command line:

```bash
mpi-kit sft --recipe tiny --data runs/data --out runs/sft_cot --mode cot --init runs/vm_cpt
mpi-kit rl  --recipe tiny --data runs/data --out runs/poro --algo grpo --policy-rollout --init runs/sft_cot
mpi-kit inspect runs/poro          # per-step table: reward, zero-std groups, each half, rescued groups
accelerate launch --multi_gpu --num_processes 2 -m mpi_kit rl ...   # the same run on 2 GPUs
```
"""),
])
