import sys; sys.path.insert(0, "tools")
from nb import write
write("08_tool_policies.ipynb", "08 · GTAPolicy: internalizing a tool-use policy", [
("markdown", """
ClevrPolicy policies are decision trees over what is in an image. **GTAPolicy** (paper §3) is the other kind of
policy a deployed agent carries: *which tool, in which version, for which user*. It is one long document:

- `### Tool Descriptions ###`: 14 tool types from the GTA benchmark (OCR, ImageDescription, GoogleSearch,
  TextToBbox, ...), some in several versions (OCR_v1 ... OCR_v5), each with JSON argument specs;
- `### Tool Calling Rules ###`: 24 rules that pick the version from a synthesized **user profile** (account type
  A-D, credits, age), plus four general tips.

A task is one step of a tool-use trajectory: images, the profile, the query and the calls made so far; the answer
is the next call as JSON, e.g. `{"name": "OCR_v4", "arguments": {"image": "image/image_1.jpg"}}`. Versions and
user-conditional rules exist so that knowing GTA does not help: the model must know *this* policy.
"""),
("code", 'RECIPE = "tiny"'),
("code", """
import json
import pandas as pd
from IPython.display import display, HTML
from mpi_kit.recipes import get_recipe
from mpi_kit.gta_policy import BASE_POLICY, DEFAULT_OVERRIDE, RULES, TOOLS, UserProfile, tool_version
recipe = get_recipe(RECIPE)
text = BASE_POLICY.text()
print(f"{len(TOOLS)} tool types, {sum(len(t.names) for t in TOOLS.values())} callable names, {len(RULES)} rules, "
      f"{len(text):,} characters")
print(text[:1400], "\\n[...]\\n", text[text.index("### Tool Calling Rules ###"):][:900])
"""),
("markdown", """
## The 24 rules are data
3 ImageDescription + 4 OCR (the fourth sends images of mathematics to MathOCR) + 2 GoogleSearch + 2 TextToImage
+ 2 RegionAttributeDescription + 4 CountGivenObject + 3 ImageStylization + 4 tips = 24. The same rows render the
document above, resolve a call (`tool_version`) and write the reasoning of the training targets.
"""),
("code", """
pd.set_option("display.max_colwidth", 120)
display(pd.DataFrame([{"rule": r.id, "tool": r.tool or "(tip)", "text": r.render().split(": ", 1)[1]} for r in RULES]))
print(tool_version("OCR", UserProfile("B", 600, 30)), tool_version("OCR", UserProfile("B", 600, 30), {"math_image": True}),
      tool_version("GoogleSearch", UserProfile("D", 499, 21)), tool_version("GoogleSearch", UserProfile("D", 500, 21)))
"""),
("markdown", """
## Rule explorer
Move the sliders: the table shows the version of every tool for that user and the rule that decides it, and the
version under the **Policy Override** used at test time (rows it changes are highlighted).
"""),
("code", """
from mpi_kit.widgets import rule_explorer
print(BASE_POLICY.with_override(DEFAULT_OVERRIDE).override_block())
rule_explorer()
"""),
("markdown", """
## Next-tool-call instances
`generate_instances` builds tasks offline over our rendered scenes: every tool and every rule branch, with
histories that follow the tips (locate with TextToBbox before RegionAttributeDescription, describe each image
first, exact image names, `k` by the kind of question). The target for SFT is a **reverse CoT**: a rationale written
for the known answer that cites the rules, then the JSON call.
"""),
("code", """
from mpi_kit.gta_data import generate_instances
insts = generate_instances(15, seed=0, image_size=tuple(recipe.render_size))
for i in (insts[9], insts[5]):
    display(*i.images)
    print(i.prompt_text(), "\\n\\nTARGET:", i.cot(), "\\n")
"""),
("markdown", """
## The real GTA benchmark
With GTA's files (`gta_dataset.zip` from the GTA release: `dataset.json` + `image/`), `load_gta` turns every
tool-call step into one instance (the paper: 557 steps from 229 queries), with a profile synthesized per query and
GTA's unversioned tool names versioned by the rules. Here a hand-written file in GTA's format:
"""),
("code", """
import pathlib
from PIL import Image
from mpi_kit.gta_data import load_gta
root = pathlib.Path("runs/nb08/gta_sample"); (root / "image").mkdir(parents=True, exist_ok=True)
Image.new("RGB", (480, 320), (240, 240, 230)).save(root / "image/image_1.jpg")
(root / "dataset.json").write_text(json.dumps({"0": {
    "tools": [{"name": "OCR"}, {"name": "Calculator"}],
    "files": [{"type": "image", "path": "image/image_1.jpg"}],
    "dialogs": [
        {"role": "user", "content": "How much do two coffees and a bagel cost?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "OCR", "arguments": {"image": "image/image_1.jpg"}}}]},
        {"role": "tool", "name": "OCR", "content": {"type": "text", "content": "Coffee 3.5  Bagel 2"}},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "Calculator", "arguments": {"expression": "2*3.5+2"}}}]},
        {"role": "tool", "name": "Calculator", "content": {"type": "text", "content": "9.0"}},
        {"role": "assistant", "content": "9 dollars."}],
    "gt_answer": {"whitelist": [["9"]], "blacklist": None}}}))
for inst in load_gta(root):
    print(inst.id, "->", json.dumps(inst.answer()), "| history:", [s.tool for s in inst.history])
"""),
("markdown", """
## Scoring = reward
Tool Acc is the exact name with its version. Arg Score averages the arguments: exact match (image, position, color,
k, top1), token-F1 text similarity (query, text, attribute, ...; an offline stand-in for the paper's BERTScore),
arithmetic expressions evaluated by a safe AST walker (never `eval`), IoU for boxes. Overall = 0.5 Tool + 0.5 Arg;
the same number is the RL reward (`gta_reward`). Bad JSON or an unknown tool scores 0 with a reason.
"""),
("code", """
from mpi_kit.gta_rewards import score_call
gold = {"name": "RegionAttributeDescription_v2", "arguments": {"image": "image/image_1.jpg", "bbox": "(10, 10, 50, 50)", "attribute": "material"}}
tries = {"right": json.dumps(gold),
         "old version": json.dumps({**gold, "name": "RegionAttributeDescription_v1"}),
         "box half off": json.dumps({**gold, "arguments": {**gold["arguments"], "bbox": "(30, 10, 70, 50)"}}),
         "other words": json.dumps({**gold, "arguments": {**gold["arguments"], "attribute": "the material"}}),
         "unknown tool": '{"name": "RegionAttributeDescription", "arguments": {}}',
         "not JSON": "<think>hmm</think> I would describe the region"}
display(pd.DataFrame([{"prediction": k, **{f: getattr(score_call(v, gold), f) for f in ("tool", "args", "overall", "reason")}}
                      for k, v in tries.items()]).round(3))
print(score_call('{"name": "Calculator", "arguments": {"expression": "(2 * 3.5) + 2"}}',
                 {"name": "Calculator", "arguments": {"expression": "9"}}))
"""),
("markdown", """
## Datasets for every TriMPI stage
The same kinds and columns as ClevrPolicy (`qa`, `cot`, `vmcpt`, `rl`, `eval` with `no_policy` / `in_context` /
`override`), plus the gold call in an `answer` column, so VM-CPT, CoT SFT and PolicyRollout run on them unchanged;
RL only swaps the reward functions. The override split holds held-out steps whose answer the override changes.
"""),
("code", """
from mpi_kit.gta_data import build_gta_datasets
from mpi_kit.data import load_kit_data
D = "runs/nb08/data"
summary = build_gta_datasets(out=D, num_instances=120 if recipe.name == "tiny" else 560, seed=0,
                             image_size=tuple(recipe.render_size))
print(json.dumps({k: summary[k] for k in ("num_instances", "datasets", "policy_chars")}))
ev = load_kit_data(D, "eval")
chars = lambda r: sum(len(p["text"] or "") for m in r["prompt"] for p in m["content"])
print(f"prompt characters: {chars(ev['in_context'][0]):,} with the policy, {chars(ev['no_policy'][0]):,} without "
      f"({100 * (1 - chars(ev['no_policy'][0]) / chars(ev['in_context'][0])):.1f}% less; paper Fig. 6: up to 93.9% fewer tokens)")
"""),
("markdown", """
## TriMPI and the baselines
The methods are chains of the kit's stages, called exactly as for ClevrPolicy; RL only swaps in the GTA reward.
In-Context is the base model with the policy in the prompt; CoT SFT; CoT SFT + GRPO; TriMPI w/ PoRo-GRPO is VM-CPT,
then CoT SFT, then GRPO with PolicyRollout. Evaluation: held-out steps with no policy in the prompt, and the Policy
Override split. On `tiny` (2 CPU cores) the policy makes prompts ~4.5k tokens long, so the notebook runs TriMPI
alone for a few steps (~2 min); a GPU recipe runs all four at the recipe's steps.
"""),
("code", """
from pathlib import Path
from mpi_kit.cpt import run_cpt
from mpi_kit.sft import run_sft
from mpi_kit.rl import run_rl
from mpi_kit.models import load_model
from mpi_kit.gta_rewards import GTA_REWARD_FUNCS, GTA_REWARD_WEIGHTS, evaluate_gta, summarize
tiny = recipe.name == "tiny"
READY = not tiny or (Path(recipe.model) / "config.json").exists()
methods = ["TriMPI w/ PoRo-GRPO"] if tiny else ["In-Context", "CoT SFT", "CoT SFT + GRPO", "TriMPI w/ PoRo-GRPO"]
steps = dict(cpt=1, sft=4, rl=1) if tiny else dict(cpt=None, sft=None, rl=None)  # None: the recipe's own
R, EVAL, NEW = "runs/nb08", (3 if tiny else None), 200
fast = {"vm_cpt.per_device_train_batch_size": 1, "sft_cot.per_device_train_batch_size": 4, "sft_cot.learning_rate": 1e-3,
        "grpo.per_device_train_batch_size": 4, "grpo.max_completion_length": NEW} if tiny else {}
rl_kw = dict(reward_funcs=GTA_REWARD_FUNCS, reward_weights=GTA_REWARD_WEIGHTS, max_steps=steps["rl"], **fast,
             **({"num_generations": 2} if tiny else {}))
rows, trained = [], {}
if not READY:
    print(f"Training needs the tiny model at {recipe.model} (`python -m mpi_kit.pretrain --out assets/tiny-vlm`) or a "
          "GPU recipe; the data and scoring above do not.")
else:
    if "In-Context" in methods:
        base, proc = load_model(recipe)
        rows += evaluate_gta(base, proc, D, "in_context", "In-Context", limit=EVAL, max_new_tokens=NEW)
    if {"CoT SFT", "CoT SFT + GRPO"} & set(methods):
        run_sft(recipe, D, f"{R}/cot_sft", "cot", max_steps=steps["sft"], **fast)
        trained["CoT SFT"] = f"{R}/cot_sft"
    if "CoT SFT + GRPO" in methods:
        run_rl(recipe, D, f"{R}/cot_sft_grpo", "grpo", False, init=f"{R}/cot_sft", **rl_kw)
        trained["CoT SFT + GRPO"] = f"{R}/cot_sft_grpo"
    if "TriMPI w/ PoRo-GRPO" in methods:
        run_cpt(recipe, D, f"{R}/vm_cpt", max_steps=steps["cpt"], **fast)
        run_sft(recipe, D, f"{R}/vmcpt_cot_sft", "cot", init=f"{R}/vm_cpt", max_steps=steps["sft"], **fast)
        run_rl(recipe, D, f"{R}/trimpi_poro_grpo", "grpo", True, init=f"{R}/vmcpt_cot_sft", **rl_kw)
        trained["TriMPI w/ PoRo-GRPO"] = f"{R}/trimpi_poro_grpo"
    for method, folder in trained.items():
        model, proc = load_model(folder)
        for setting in ("no_policy", "override"):
            rows += evaluate_gta(model, proc, D, setting, method, limit=EVAL, max_new_tokens=NEW)
"""),
("markdown", "## Our scores beside the paper's (Qwen2.5-VL-7B, Tables 1-3; `None`: not reported)"),
("code", """
from mpi_kit.paper import GTA_7B, GTA_OVERRIDE_7B
ours = {(r["method"], r["setting"]): r for r in summarize(rows)}
table = []
for m in ("In-Context", "CoT SFT", "CoT SFT + GRPO", "TriMPI w/ PoRo-GRPO"):
    mine = ours.get((m, "in_context" if m == "In-Context" else "no_policy"), {})
    over = ours.get((m, "override"), {})
    table.append({"method": m, "tool": mine.get("tool"), "arg": mine.get("args"), "overall": mine.get("overall"),
                  "override overall": over.get("overall"), "paper tool": GTA_7B[m][0] if m in GTA_7B else None,
                  "paper arg": GTA_7B[m][1] if m in GTA_7B else None, "paper overall": GTA_7B.get(m, (None,) * 3)[2],
                  "paper override overall": GTA_OVERRIDE_7B[m][2]})
display(pd.DataFrame(table))
if rows:
    display(pd.DataFrame(rows)[["method", "setting", "gold", "pred", "overall", "reason"]].head(8))
"""),
("markdown", """
On `tiny` the runs are a few steps on a 5M-parameter model, so read the numbers as the pipeline working, not as a
replication: the paper's are Qwen2.5-VL-7B after 50 RL epochs. The same calls with a GPU recipe (or at full scale
from the command line) are:

```bash
mpi-kit gta-data --out runs/gta --gta-root gta_dataset     # or without --gta-root: generated instances
mpi-kit cpt --recipe qwen2.5-vl-3b --data runs/gta --out runs/gta/vm_cpt
mpi-kit sft --recipe qwen2.5-vl-3b --data runs/gta --out runs/gta/sft --mode cot --init runs/gta/vm_cpt
```

RL takes the GTA reward in Python: `run_rl(recipe, "runs/gta", out, "grpo", True, init=..., reward_funcs=GTA_REWARD_FUNCS)`.
"""),
])
