"""One more follow piece on top of a finished model (default: the shipped one), then the card's evaluation.
The earlier stages are stubs pointing at nothing: `pretrain` skips stages whose final/config.json exists and
resumes from the last one, which holds MODEL's weights. Usage:
    python dev/extra_piece.py WORK PIECE_JSON [--model assets/tiny-vlm] [--threads 1]
PIECE_JSON: '{"name": "follow6d", "steps": 500, "lr": 2e-4, "case_pool": 64, "mix": {"policy6": 0.3, ...}}'
(the 2026-12-03 vision trial also unfroze the vision tower, a one-line change to pretrain_tiny.py not kept: dev/LOG)
follow6e/6f were trained this way (their mix said "countw" for what is now `make_example("count_balanced", ...)`,
the same examples; dev/LOG 2026-12-04)."""
import argparse, json, shutil, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import pretrain_tiny as pt  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("work"); ap.add_argument("piece")
ap.add_argument("--model", default="assets/tiny-vlm"); ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--n-perception", type=int, default=400); ap.add_argument("--n-policy", type=int, default=200)
a = ap.parse_args()
pt.THREADS = a.threads
piece = json.loads(a.piece)
work = Path(a.work)
stages = ["init", "see", "read", *(f["name"] for f in pt.FOLLOW)]
for s in stages[:-1]:
    (work / s / "final").mkdir(parents=True, exist_ok=True)
    (work / s / "final" / "config.json").touch()
last = work / stages[-1] / "final"
if not (last / "model.safetensors").exists():
    shutil.rmtree(last, ignore_errors=True)
    shutil.copytree(a.model, last, ignore=shutil.ignore_patterns("README.md", "eval_results.json", "pretrain.json"))
t = time.time()
cfg = pt.PretrainConfig(out=str(work / "out"), work=str(work), follow=[*pt.FOLLOW, piece])
pt.pretrain(cfg)
train_s = time.time() - t
from mpi_kit.tiny import load_tiny  # noqa: E402
pt.set_threads()
model, processor = load_tiny(work / "out")
res = pt.evaluate(model, processor, a.n_perception, a.n_policy)
res["train_seconds"] = round(train_s, 1)
(work / "eval.json").write_text(json.dumps(res, indent=1))
print(json.dumps({k: res[k] for k in res if not isinstance(res[k], dict) or k == "interval_95"}, indent=1))
