"""GTAPolicy: the next tool call of an agent under versioned tool rules and user profiles (paper App. C.2).
The answer is one JSON call `{"name": ..., "arguments": {...}}`, scored by Tool Acc, Arg Score and Overall
(`rewards.py`), which is also the RL reward. One row of a comparison, "GTA".

Data: `data.py` (generated instances, or GTA's own files with `gta_root`); the policy document:
`policy.py`.
"""
from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

from .rewards import GTA_REWARD_FUNCS, GTA_REWARD_WEIGHTS, parse_call, score_call
from ...rewards import completion_text
from ..base import Row, Task

NEW_TOKENS = 256  # the longest GTA reverse CoT + call is ~250 tiny-tokenizer tokens


def score_rows(rows, completions: list[str], method: str = "", setting: str = "no_policy") -> list[dict]:
    """One tidy row per example: gold and predicted tool names, tool/args/overall scores, why, the cited rules."""
    out = []
    for r, c in zip(rows, completions):
        s = score_call(c, r["answer"])
        call, _ = parse_call(c)
        out.append({"method": method, "setting": setting, "id": r["id"], "tool_type": r["tool"],
                    "gold": json.loads(r["answer"])["name"], "pred": call["name"] if call else None,
                    "tool": s.tool, "args": s.args, "overall": s.overall, "reason": s.reason,
                    "gold_rules": list(r["path"]),
                    "cited": re.findall(r"Rule ([A-Za-z]+\.\d)", completion_text(c)), "completion": c})
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Tool Acc, Arg Score and Overall (%) per (method, setting), as the paper reports them."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    return [{"method": m, "setting": s, "n": len(g),
             **{k: round(100 * sum(r[k] for r in g) / len(g), 2) for k in ("tool", "args", "overall")}}
            for (m, s), g in groups.items()]


class GTAPolicyTask(Task):
    name = "gta"
    title = "GTAPolicy"
    methods = ("In-Context", "CoT SFT", "CoT SFT + GRPO", "TriMPI w/ PoRo-GRPO")  # what the paper compares on GTA
    config_fields = ("dataset", "num_instances", "gta_root")
    gold_column = "answer"  # the gold call as JSON (the `case` column holds only its tool name)
    reward_funcs = GTA_REWARD_FUNCS
    reward_weights = GTA_REWARD_WEIGHTS

    # ---------------------------------------------------------------- data
    data_command = "gta-data"
    data_help = "build GTAPolicy next-tool-call datasets (generated, or from GTA's files)"
    data_files = "summary.json, policy.txt, instances.jsonl"
    summary_keys = ("source", "num_instances", "datasets", "seconds")

    @property
    def errors(self) -> tuple:
        from .policy import PolicyError

        return (PolicyError,)

    def data_settings(self) -> type:
        from .data import GTADataConfig

        return GTADataConfig

    def build(self, settings, progress: bool = False) -> dict:
        from .data import build_gta_datasets

        return build_gta_datasets(settings, progress=progress)

    def policy_texts(self, data_dir: Path) -> list[str]:
        from ...data import DataError

        path = Path(data_dir) / "policy.txt"
        if not path.exists():
            raise DataError(f"no policy at {path}; build the data with `mpi-kit gta-data --out {data_dir}`")
        return [path.read_text()]

    def typical_texts(self) -> dict:
        return _typical_texts()

    def rows(self, cfg) -> list[Row]:
        return [Row("GTA")]

    def build_data(self, cfg, row: Row, data_dir: Path, recipe) -> None:
        from .data import GTADataConfig, build_gta_datasets

        build_gta_datasets(GTADataConfig(out=str(data_dir), gta_root=cfg.gta_root, seed=cfg.seed,
                                         num_instances=cfg.num_instances, image_size=tuple(recipe.render_size)))

    def completion_budget(self, cfg, data_dir: Path) -> int:
        return cfg.max_new_tokens or NEW_TOKENS

    # ---------------------------------------------------------------- answers
    def parse(self, completion) -> str | None:
        """The tool the completion calls (its name, version included)."""
        call, _ = parse_call(completion)
        return call["name"] if call else None

    def is_correct(self, answer: str | None, gold) -> bool:
        """The right tool (Tool Acc: `answer` is the called tool's name); the arguments are scored by the reward."""
        try:
            return answer is not None and answer == (json.loads(gold) if isinstance(gold, str) else gold)["name"]
        except (TypeError, KeyError, ValueError):  # no gold call, or not one
            return False

    # ---------------------------------------------------------------- evaluation
    def score_rows(self, rows, completions, method: str = "", setting: str = "no_policy") -> list[dict]:
        return score_rows(rows, completions, method, setting)

    def summarize(self, rows: list[dict]) -> list[dict]:
        return summarize(rows)

    def evaluate(self, method: str, model, processor, data_dir: Path, cfg) -> dict:
        """Tool Acc, Arg Score and Overall (%) with no policy (In-Context: with it), under the override and, for
        trained methods, with the policy back in context; forgetting as for ClevrPolicy."""
        from ..clevr.evaluate import perception

        kw = dict(limit=cfg.eval_limit, max_new_tokens=self.completion_budget(cfg, data_dir), method=method)

        def scores(setting: str) -> tuple[list, dict]:
            rows = self.evaluate_accuracy(model, processor, data_dir, setting, **kw)
            return rows, {k: summarize(rows)[0][k] for k in ("tool", "args", "overall")}

        rows, main = scores("in_context" if method == "In-Context" else "no_policy")
        res = {**main, "n": len(rows)}
        if method != "In-Context":
            res["policy_in_context"] = scores("in_context")[1]
        res["override"] = scores("override")[1]
        if cfg.forgetting:
            n = min(cfg.side_limit or cfg.eval_limit or 40, len(rows))  # no more than the rows that exist
            res["perception"], n, ci = perception(model, processor, n)
            res["ns"], res["intervals"] = {"perception": n}, {"perception": ci}
        res["examples"] = [{k: r[k] for k in ("gold", "pred", "overall", "reason", "completion")} for r in rows[:3]]
        return res

    def context_check(self, model, processor, data_dir: Path, limit: int | None = 8) -> dict:
        """The longest in-context prompt (policy + images + query) in tokens vs the positions the model was
        trained on. Longer prompts still run (RoPE has no position table and nothing truncates), but attention
        past the trained length is out of distribution, so a warning says so and results.json records it."""
        from trl.data_utils import prepare_multimodal_messages

        from ...data import load_kit_data

        ev = load_kit_data(data_dir, "eval")["in_context"]
        rows = ev.select(range(min(limit or len(ev), len(ev))))
        n = max(len(processor(text=[processor.apply_chat_template(
            prepare_multimodal_messages(r["prompt"], images=r["images"]), add_generation_prompt=True)],
            images=[r["images"]], return_tensors="pt")["input_ids"][0]) for r in rows)
        conf = getattr(model.config, "text_config", model.config)
        limit_pos = getattr(conf, "max_position_embeddings", None)
        out = {"in_context_prompt_tokens": n, "max_position_embeddings": limit_pos,
               "beyond_trained_context": bool(limit_pos and n > limit_pos)}
        if out["beyond_trained_context"]:
            print(f"mpi-kit pipeline: warning: GTA prompts with the policy in context are up to {n} tokens, beyond "
                  f"the {limit_pos} positions this model was trained on. They run (RoPE extrapolates; nothing "
                  f"truncates), but In-Context scores and PolicyRollout's policy-aware rollouts are out of "
                  f"distribution; a Qwen recipe (32k+ positions) has room for them.", file=sys.stderr)
        return out

    # ---------------------------------------------------------------- results
    def paper_table(self) -> dict:
        from ...paper import gta_paper_table

        return gta_paper_table()

    def table(self, results: dict) -> str:
        from .report import gta_table

        return gta_table(results)

    def report(self, out: Path, results: dict) -> Path:
        from .report import gta_pipeline_report

        return gta_pipeline_report(out, results)


@functools.lru_cache(maxsize=None)
def _typical_texts() -> dict:
    """The base policy, and 16 generated instances' prompts and CoTs."""
    from .data import generate_instances
    from .policy import BASE_POLICY

    ins = generate_instances(16, seed=0)
    return {"policy": BASE_POLICY.text(), "queries": [i.prompt_text() for i in ins], "cots": [i.cot() for i in ins]}
