"""The demo's regime over seeds, as Markdown for docs/results.md (issue 35): per-seed accuracy with intervals, the
paired tests that matter, PoRo's two halves in its first quarter, rescues and the clipped share. Usage:
    python dev/regime_table.py RESULTS.json [RESULTS.json ...]"""
import json
import statistics
import sys
from pathlib import Path

from mpi_kit.tasks.clevr.report import error_parts_text
from mpi_kit.stats import discordant, mcnemar_exact

PAIRS = [("CoT SFT + GRPO", "CoT SFT"), ("TriMPI w/ GRPO-2G", "VM-CPT + CoT SFT"),
         ("TriMPI w/ PoRo-GRPO", "VM-CPT + CoT SFT"), ("TriMPI w/ PoRo-GRPO", "TriMPI w/ GRPO-2G"),
         ("TriMPI w/ PoRo-GRPO", "CoT SFT + GRPO"), ("TriMPI w/ PoRo-GRPO", "In-Context")]


def load(path):
    r = json.loads(Path(path).read_text())
    return r, {v["method"]: v for v in r["methods"].values()}


def right(r):
    return [x["correct"] for x in r["rows"]]


runs = [load(p) for p in sys.argv[1:]]
methods = list(runs[0][1])
seeds = [r["config"]["seed"] for r, _ in runs]
print("| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (sd) |")
print("|---|" + "---|" * (len(seeds) + 1))
for m in methods:
    accs = [ms[m]["accuracy"] for _, ms in runs]
    cells = [f"{ms[m]['accuracy']:.1f} ({ms[m]['interval_95'][0]:.1f}-{ms[m]['interval_95'][1]:.1f})" for _, ms in runs]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"| {m} | " + " | ".join(cells) + f" | {statistics.mean(accs):.1f} ({sd:.1f}) |")
print()
print("| paired (exact McNemar): a vs b | " + " | ".join(f"seed {s}: a only / b only, p" for s in seeds) + " |")
print("|---|" + "---|" * len(seeds))
for a, b in PAIRS:
    cells = []
    for _, ms in runs:
        x, y = discordant(right(ms[a]), right(ms[b]))
        cells.append(f"{x} / {y}, {mcnemar_exact(right(ms[a]), right(ms[b])):.2g}")
    print(f"| {a} vs {b} | " + " | ".join(cells) + " |")
print()
print("| side evaluations (n = 100; perception n = 200) | " + " | ".join(f"seed {s}" for s in seeds) + " |")
print("|---|" + "---|" * len(seeds))
for m in methods:
    cells = []
    for _, ms in runs:
        r = ms[m]
        ctx = "-" if r.get("policy_in_context") is None else f"{r['policy_in_context']:.0f}"
        cells.append(f"in context {ctx}, override {r['override']:.0f}, perception {r['perception']:.1f}")
    print(f"| {m} | " + " | ".join(cells) + " |")
print()
for (res, ms), s in zip(runs, seeds):
    p = ms["TriMPI w/ PoRo-GRPO"]
    q = p["rollouts"][: len(p["rollouts"]) // 4]
    mean = lambda k: sum(x[k] for x in q) / len(q)  # noqa: E731
    resc = round(sum(x["frac_rescued"] * x["groups"] for x in q))
    groups = round(sum(x["groups"] for x in q))
    stage = Path(res["methods"]["N4/TriMPI w/ PoRo-GRPO"]["stage_dir"])
    clip = None
    if (stage / "summary.json").exists():
        c = json.loads((stage / "summary.json").read_text()).get("clipped") or []
        clip = (sum(x["share"] > 0 for x in c), len(c), max((x["share"] for x in c), default=0))
    wrong = "; ".join(f"{m}: {error_parts_text(ms[m]['errors'])}" for m in methods)
    print(f"- seed {s}: PoRo's first {len(q)} steps: reward no-policy half {mean('reward_no_policy'):.2f}, "
          f"policy-aware half {mean('reward_policy_aware'):.2f}; rescued {resc} of {groups} groups"
          + (f"; clipped tokens on {clip[0]} of {clip[1]} steps (at most {100 * clip[2]:.1f}%)" if clip else "")
          + f". Wrong answers first broke at: {wrong}")
