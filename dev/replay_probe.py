"""Does policy-in-context replay during CoT SFT keep the model reading its policy (so PolicyRollout's policy-aware
half can rescue groups)? Replaces a share of the CoT SFT rows with the same (scene, CoT) shown with the policy in
the prompt (the VM-CPT rows' prompts), trains, and scores no-policy and in-context accuracy (n = 200). Usage:
    python dev/replay_probe.py DATA OUT STEPS REPLAY [--set sft_cot.learning_rate=1e-4]"""
import argparse, json, random, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import mpi_kit.sft as sft
from mpi_kit.data import load_kit_data
from mpi_kit.evaluate import evaluate_accuracy
from mpi_kit.tasks.clevr.evaluate import summarize
from mpi_kit.pipeline import load_for_eval, PipelineConfig

ap = argparse.ArgumentParser()
ap.add_argument("data"); ap.add_argument("out"); ap.add_argument("steps", type=int); ap.add_argument("replay", type=float)
ap.add_argument("--init"); ap.add_argument("--set", nargs="*", default=[])
a = ap.parse_args()
over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
cols = ["prompt", "completion", "images"]
cot = load_kit_data(a.data, "cot")["train"].select_columns(cols + ["id"])
vm = {r["id"]: i for i, r in enumerate(load_kit_data(a.data, "vmcpt")["train"].select_columns(["id"]))}
vmds = load_kit_data(a.data, "vmcpt")["train"].select_columns(cols + ["id"])
rng = random.Random(f"replay/{a.replay}")
rows = [vmds[vm[r["id"]]] if rng.random() < a.replay else r for r in cot]
import datasets
ds = datasets.Dataset.from_list([{k: r[k] for k in cols} for r in rows], features=cot.select_columns(cols).features)
sft.check_sft = lambda ds, stage: None  # the probe puts the policy in some prompts on purpose
t = time.time()
s = sft.run_sft("tiny", a.data, a.out, "cot", init=a.init, max_steps=a.steps, dataset=ds, **over)
tt = time.time() - t
model, proc = load_for_eval(PipelineConfig(), Path(a.out), {})
res = {}
for setting in ("no_policy", "in_context"):
    r = evaluate_accuracy(model, proc, a.data, setting, method="CoT SFT", limit=200, max_new_tokens=120)
    res[setting] = (summarize(r)[0]["accuracy"], summarize(r)[0]["interval_95"])
print(json.dumps({"steps": a.steps, "replay": a.replay, "set": a.set, "train_s": round(tt),
                  "with_policy_rows": sum("# Condition" in json.dumps(r["prompt"]) for r in rows), "rows": len(rows), **res}))
