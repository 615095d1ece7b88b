"""Where does a no-policy CoT break: a question recalled wrong (the policy not internalized), a yes/no seen wrong
(perception), or a go-to / case id wrong (the tree not recalled)? Greedy on n held-out eval rows per model; the
first wrong part of each wrong answer (`mpi_kit.tasks.clevr.evaluate.error_parts`, what the pipeline records per method).
Usage: python dev/break_probe.py DATA RUN [RUN ...] [--n 200] [--setting no_policy] [--max-new-tokens 120]"""
import argparse, json
from pathlib import Path
import torch
torch.set_num_threads(1)
from mpi_kit.tasks.clevr.evaluate import error_parts
from mpi_kit.evaluate import evaluate_accuracy
from mpi_kit.pipeline import load_for_eval, PipelineConfig

ap = argparse.ArgumentParser()
ap.add_argument("data"); ap.add_argument("runs", nargs="+"); ap.add_argument("--n", type=int, default=200)
ap.add_argument("--setting", default="no_policy"); ap.add_argument("--max-new-tokens", type=int, default=120)
a = ap.parse_args()
for run in a.runs:
    model, proc = load_for_eval(PipelineConfig(), Path(run), {})
    rows = evaluate_accuracy(model, proc, a.data, a.setting, limit=a.n, max_new_tokens=a.max_new_tokens)
    print(json.dumps({"run": run, "setting": a.setting, "n": len(rows), "right": sum(r["correct"] for r in rows),
                      **error_parts(rows)}), flush=True)
