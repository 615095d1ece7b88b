"""How many CoT SFT steps does the demo (N = 4, 4 policies) need? Trains CoT SFT (optionally after VM-CPT) for
`steps` and scores no-policy accuracy, n = 200, with per-step CoT accuracy. Usage:
    python dev/sft_probe.py DATA OUT STEPS [--init CPT_DIR] [--lr LR]"""
import argparse, json, time
import torch
torch.set_num_threads(1)
from mpi_kit.evaluate import evaluate_accuracy
from mpi_kit.tasks.clevr.evaluate import summarize
from mpi_kit.pipeline import load_for_eval, PipelineConfig
from mpi_kit.sft import run_sft

ap = argparse.ArgumentParser()
ap.add_argument("data"); ap.add_argument("out"); ap.add_argument("steps", type=int)
ap.add_argument("--init"); ap.add_argument("--set", nargs="*", default=[])
a = ap.parse_args()
over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
t = time.time()
s = run_sft("tiny", a.data, a.out, "cot", init=a.init, max_steps=a.steps, **over)
tt = time.time() - t
model, proc = load_for_eval(PipelineConfig(), __import__("pathlib").Path(a.out), {})
t = time.time()
rows = evaluate_accuracy(model, proc, a.data, "no_policy", method="CoT SFT", limit=200, max_new_tokens=120)
ic = evaluate_accuracy(model, proc, a.data, "in_context", method="CoT SFT", limit=200, max_new_tokens=120)
print(json.dumps({"steps": a.steps, "init": a.init, "set": a.set, "train_s": round(tt), "eval_s": round(time.time() - t),
                  "acc": summarize(rows)[0]["accuracy"], "ci": summarize(rows)[0]["interval_95"], "in_context": [summarize(ic)[0]["accuracy"], summarize(ic)[0]["interval_95"]], "loss": s.get("train_loss")}))
