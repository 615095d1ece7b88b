"""What do GRPO and PolicyRollout add on top of a CoT SFT model at the demo's size? Trains RL from INIT for `steps`
and scores no-policy and in-context accuracy (n = 200), with the rescued-group share. Usage:
    python dev/rl_probe.py DATA INIT OUT STEPS [--poro] [--algo dapo] [--set grpo.learning_rate=5e-5 ...]"""
import argparse, json, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from mpi_kit.evaluate import evaluate_accuracy
from mpi_kit.tasks.clevr.evaluate import summarize
from mpi_kit.pipeline import load_for_eval, PipelineConfig, rollout_steps
from mpi_kit.rl import run_rl

ap = argparse.ArgumentParser()
ap.add_argument("data"); ap.add_argument("init"); ap.add_argument("out"); ap.add_argument("steps", type=int)
ap.add_argument("--poro", action="store_true"); ap.add_argument("--set", nargs="*", default=[])
ap.add_argument("--algo", default="grpo", choices=["grpo", "dapo"])
ap.add_argument("--trl", nargs="*", default=[], help="GRPOConfig fields the recipe lacks, e.g. top_entropy_quantile=0.2")
a = ap.parse_args()
if a.trl:  # wrap GRPOConfig so these reach TRL untouched (probe only; not recipe fields)
    import trl
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.trl)}
    _Cfg = trl.GRPOConfig
    trl.GRPOConfig = lambda **kw: _Cfg(**{**kw, **extra})
over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
over.setdefault(f"{a.algo}.max_completion_length", 120)
t = time.time()
run_rl("tiny", a.data, a.out, a.algo, a.poro, init=a.init, max_steps=a.steps, **over)
tt = time.time() - t
model, proc = load_for_eval(PipelineConfig(), Path(a.out), {})
res = {}
for setting in ("no_policy", "in_context"):
    rows = evaluate_accuracy(model, proc, a.data, setting, method="rl", limit=200, max_new_tokens=120)
    res[setting] = (summarize(rows)[0]["accuracy"], summarize(rows)[0]["interval_95"])
ro = rollout_steps(Path(a.out))
k = max(1, len(ro) // 4)
print(json.dumps({"steps": a.steps, "algo": a.algo, "poro": a.poro, "set": a.set, "trl": a.trl, "train_s": round(tt), **res,
                  "zero_std_first": round(sum(x["frac_zero_std"] for x in ro[:k]) / k, 2),
                  "rescued_first": round(sum(x["frac_rescued"] for x in ro[:k]) / k, 2),
                  "reward_np_first_last": [ro[0]["reward_no_policy"], ro[-1]["reward_no_policy"]]}))
