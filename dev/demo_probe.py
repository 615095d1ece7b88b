import time, json, torch
torch.set_num_threads(2)
from mpi_kit.pipeline import DEMO_METHODS, PipelineConfig, run_pipeline, table
t = time.time()
res = run_pipeline(PipelineConfig(out="runs/demo_probe2", depths=(4,), methods=DEMO_METHODS, seed=0, num_policies=4,
                                  num_scenes=260, eval_limit=200, cpt_steps=30, sft_steps=80, rl_steps=24,
                                  forgetting=False))
print(table(res)); print("wall", time.time() - t)
for k, r in res["methods"].items():
    ro = r.get("rollouts", [])
    print(k, r.get("train"), r.get("n"), r.get("accuracy"), r.get("interval_95"),
          [(x["step"], x["frac_zero_std"], x["frac_rescued"]) for x in ro[:6]])
