"""Policy distillation beside the full comparison (issue 34): the distillation runs' rows and the full comparison's
on the same held-out questions (the same data, eval_limit and row ids), with exact McNemar tests.

    python dev/distill_table.py dev/results/full_regime_2026-12-07.json dev/results/distill_regime_*.json
"""
import json
import sys

from pathlib import Path

from mpi_kit.pipeline import method_steps
from mpi_kit.stats import mcnemar_exact

AGAINST = ("In-Context", "CoT SFT", "VM-CPT + CoT SFT", "TriMPI w/ GRPO", "TriMPI w/ PoRo-GRPO")


def chain_seconds(results: dict, depth: int, method: str) -> float | None:
    """The wall time of every stage a method trains (VM-CPT + CoT SFT + RL for TriMPI), from the stages' own
    summaries in the run folder (None when the folder is not here)."""
    root = Path(results["config"]["out"]) / f"N{depth}"
    try:
        return sum(json.load(open(root / step / "summary.json"))["seconds"] for step in method_steps(method))
    except FileNotFoundError:
        return None


def rows(results: dict, key: str) -> dict:
    return {r["id"]: r["correct"] for r in results["methods"][key]["rows"]}


def main(full_path: str, *distill_paths: str) -> None:
    full = json.load(open(full_path))
    runs = [(p, json.load(open(p))) for p in distill_paths]
    for d in (2, 4, 6):
        print(f"\nN = {d}")
        print(f"{'method':<44}{'accuracy':>9}  95% interval   n   train s (all stages)  "
              + "  ".join(f"p vs {a}" for a in AGAINST))
        for a in AGAINST:
            r = full["methods"][f"N{d}/{a}"]
            tr = chain_seconds(full, d, a)
            print(f"{a:<44}{r['accuracy']:>9.1f}  [{r['interval_95'][0]:4.1f}-{r['interval_95'][1]:4.1f}]  {r['n']}  "
                  f"{'-' if tr is None else f'{tr:7.1f}'}")
        for path, res in runs:
            source = res["config"].get("distill_source", "teacher")
            for m in ("Policy Distillation", "VM-CPT + Policy Distillation"):
                key = f"N{d}/{m}"
                if key not in res["methods"]:
                    continue
                r = res["methods"][key]
                ps = []
                for a in AGAINST:
                    x, y = rows(res, key), rows(full, f"N{d}/{a}")
                    ids = [i for i in x if i in y]
                    ps.append(f"{mcnemar_exact([x[i] for i in ids], [y[i] for i in ids]):.2g}")
                print(f"{m + ' (' + source + ')':<44}{r['accuracy']:>9.1f}  [{r['interval_95'][0]:4.1f}-"
                      f"{r['interval_95'][1]:4.1f}]  {r['n']}  {chain_seconds(res, d, m):7.1f}  " + "  ".join(ps))


if __name__ == "__main__":
    main(*sys.argv[1:])
