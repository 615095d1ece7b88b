"""Why counting stays near 75%: the card's counting questions (held-out `eval/` keys, greedy), split by whether two
of the counted objects fall in one visual token (the tiny VLM's 8 px patches merged 2x2: one token per 16 x 16 px,
a 6 x 4 grid at 96 x 64), by the gold count, and by the sign of the error. Usage:
    python dev/count_probe.py [--model assets/tiny-vlm] [--n 400]"""
import argparse, json
from collections import Counter, defaultdict
import torch
torch.set_num_threads(1)
from mpi_kit.tasks.clevr.abilities import make_example
from mpi_kit.generation import generate_completions
from mpi_kit.pipeline import load_for_eval, PipelineConfig
from mpi_kit.tiny import IMAGE_SIZE

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="assets/tiny-vlm"); ap.add_argument("--n", type=int, default=400)
a = ap.parse_args()
model, proc = load_for_eval(PipelineConfig(recipe="tiny" if a.model == "assets/tiny-vlm" else a.model), None, {})
ex = [make_example("count", f"eval/{i}") for i in range(a.n)]
outs = generate_completions(model, proc, ex, 8, batch_size=16)
W, H = IMAGE_SIZE[0] // 16, IMAGE_SIZE[1] // 16
by = defaultdict(lambda: [0, 0])
sign = Counter()
for e, o in zip(ex, outs):
    gold = int(e["answer"])
    counted = [ob for ob in e["scene"].objects if ob.matches(**e["subject"])]
    cells = Counter((min(W - 1, int(ob.x * W)), min(H - 1, int(ob.y * H))) for ob in counted)
    shared = any(c > 1 for c in cells.values())
    ok = o.strip() == e["answer"]
    for key in ("two counted objects share a token" if shared else "each counted object in its own token",
                f"gold {min(gold, 4)}{'+' if gold >= 4 else ''}", f"{len(e['scene'].objects)} objects"):
        by[key][0] += ok
        by[key][1] += 1
    if not ok and o.strip().isdigit():
        sign["over" if int(o.strip()) > gold else "under"] += 1
        sign[f"off by {abs(int(o.strip()) - gold)}"] += 1
print(json.dumps({"n": a.n, "accuracy": sum(v[0] for k, v in by.items() if k.startswith("gold")) / a.n,
                  "by": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by.items())}, "errors": dict(sign)}, indent=1))
