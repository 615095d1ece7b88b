"""Same seed, same bytes, across two checkouts: build the demo's data (N = 4, 4 policies x 260 scenes, seed 0) and
train CoT SFT on it, printing a hash of every dataset file and the loss at every step. Run it under each checkout
(PYTHONPATH=<checkout> python dev/ab_sft.py OUT [STEPS] [SUMMARY]) and compare; with SUMMARY (a stage's
summary.json, e.g. runs/demo/N4/cot_sft/summary.json) it says whether the losses equal that run's."""
import hashlib
import json
import pathlib
import sys

import torch

import mpi_kit
from mpi_kit.tasks.clevr.data import DataConfig, build_datasets
from mpi_kit.sft import run_sft

out, steps = pathlib.Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 480
print("code:", mpi_kit.__file__)
build_datasets(DataConfig(out=str(out / "data"), num_policies=4, num_scenes=260, depth=4, seed=0), progress=False)
print(json.dumps({str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()[:12]
                  for f in sorted((out / "data").rglob("*.arrow"))}, indent=1))
torch.set_num_threads(2)
losses = [x["loss"] for x in run_sft("tiny", str(out / "data"), str(out / "sft"), "cot", max_steps=steps)["loss"]]
print("losses:", losses)
if len(sys.argv) > 3:
    other = [x["loss"] for x in json.loads(pathlib.Path(sys.argv[3]).read_text())["loss"]]
    print("same losses as", sys.argv[3], ":", losses == other)
