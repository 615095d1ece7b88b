"""The scripts behind dev/LOG.md and the tiny card; run from the repository root with the kit's .venv."""
"""Save the finished pretraining to assets/tiny-vlm, evaluate it in two 1-thread processes (N = 6 alone;
perception + N = 2, 4: the same examples and batches as one `pretrain --eval` run), merge, write the card."""
import json, subprocess, sys
from pathlib import Path
import pretrain_tiny as P
from transformers import AutoTokenizer

out = Path("assets/tiny-vlm")
subprocess.run([sys.executable, "scripts/pretrain_tiny.py", "--work", "runs/pt13", "--out", str(out), "--threads", "1",
                "--no-card"], check=True)
a = subprocess.Popen([sys.executable, "dev/ship_part.py", "1", "6", "runs/part_a.json"])
b = subprocess.Popen([sys.executable, "dev/ship_part.py", "400", "2,4", "runs/part_b.json"])
assert a.wait() == 0 and b.wait() == 0
ra, res = (json.loads(Path(f"runs/part_{k}.json").read_text()) for k in "ab")
for k in ("in_context_N6", "in_context_N6_majority"):
    res[k] = ra[k]
res["n"]["in_context_N6"] = ra["n"]["in_context_N6"]
res["interval_95"]["in_context_N6"] = ra["interval_95"]["in_context_N6"]
res["cot_steps"]["N6"] = ra["cot_steps"]["N6"]
print("walls", ra.pop("wall"), res.pop("wall"))
info = json.loads((out / "pretrain.json").read_text())
info["vocab_size"] = len(AutoTokenizer.from_pretrained(out))
P.write_card(out, info, res)
print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1))
print(res["cot_steps"])
