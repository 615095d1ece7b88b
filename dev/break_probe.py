"""Where does a no-policy CoT break: a question recalled wrong (the policy not internalized) or a yes/no seen
wrong (perception)? Greedy on n held-out eval rows per model; for each, the first wrong part of the first wrong
step (mpi_kit.abilities.cot_steps), counted. Usage: python dev/break_probe.py DATA RUN [RUN ...] [--n 200]"""
import argparse, json
from collections import Counter
from pathlib import Path
import torch
torch.set_num_threads(1)
from mpi_kit.abilities import STEP_PARTS, cot_steps
from mpi_kit.data import load_kit_data, spread
from mpi_kit.evaluate import evaluate_accuracy
from mpi_kit.pipeline import load_for_eval, PipelineConfig

ap = argparse.ArgumentParser()
ap.add_argument("data"); ap.add_argument("runs", nargs="+"); ap.add_argument("--n", type=int, default=200)
ap.add_argument("--setting", default="no_policy")
a = ap.parse_args()
gold = spread(load_kit_data(a.data, "eval")[a.setting], a.n)["completion"]
for run in a.runs:
    model, proc = load_for_eval(PipelineConfig(), Path(run), {})
    rows = evaluate_accuracy(model, proc, a.data, a.setting, limit=a.n, max_new_tokens=120)
    first = Counter()
    for r, g in zip(rows, gold):
        g = g[-1]["content"][0]["text"]  # the gold CoT (one assistant message, one text part)
        steps = cot_steps(r["completion"], g)
        bad = next((p for p in STEP_PARTS if steps[p][0] < steps[p][1]), None)
        first["right" if r["correct"] else (bad or "other")] += 1
    print(json.dumps({"run": run, "setting": a.setting, "n": len(rows), **dict(first)}))
