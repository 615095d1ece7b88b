"""ClevrPolicy: decision trees over CLEVR-style scenes (paper §3.1). A policy of depth N routes an (image, query)
to one of its cases; the answer is `\\boxed{Case k}`. One row of a comparison per N.

Data: `data.py` (policies `policy.py`, scenes `scenes.py`); rewards: `rewards.py`; evaluations: `evaluate.py`.
This file is what ties them to the pipeline, RL and the inspector.
"""
from __future__ import annotations

import functools
from pathlib import Path

from .rewards import REWARD_FUNCS, parse_answer
from ...rewards import REWARD_WEIGHTS
from ..base import Row, Task


class ClevrPolicyTask(Task):
    name = "clevr"
    title = "ClevrPolicy"
    config_fields = ("depths", "num_policies", "num_scenes", "variant", "cot_share", "cot_source")
    gold_column = "case"
    reward_funcs = REWARD_FUNCS
    reward_weights = REWARD_WEIGHTS

    @property
    def methods(self) -> tuple:
        from ...paper import METHODS

        return tuple(METHODS)

    # ---------------------------------------------------------------- data
    def check(self, cfg) -> None:
        from ...data import DataError
        from .policy import MAX_DEPTH

        bad = [d for d in cfg.depths if not 1 <= d <= MAX_DEPTH]
        if bad:
            raise DataError(f"depths must be from 1 to {MAX_DEPTH} (the paper uses 2 4 6), got {bad}")

    data_command = "data"
    data_help = "build ClevrPolicy policies and datasets"
    summary_keys = ("policies", "num_scenes", "datasets", "seconds")

    @property
    def errors(self) -> tuple:
        from .policy import PolicyError
        from .scenes import SceneError

        return (PolicyError, SceneError)

    def data_settings(self) -> type:
        from .data import DataConfig

        return DataConfig

    def build(self, settings, progress: bool = True) -> dict:
        from .data import build_datasets

        return build_datasets(settings, progress=progress)

    @property
    def paper_regime(self) -> dict:
        """The paper's data regime (`data.PAPER_REGIME`): DataConfig fields a comparison in it passes."""
        from .data import PAPER_REGIME

        return dict(PAPER_REGIME)

    def policy_texts(self, data_dir: Path) -> list[str]:
        from .data import load_policies

        return [p.text() for p in load_policies(data_dir).values()]

    def cot_budget(self, depth: int) -> int:
        """New tokens a chain of thought of depth N may take (`forward_cot.cot_budget`)."""
        from .forward_cot import cot_budget

        return cot_budget(depth)

    def typical_texts(self, depth: int = 4) -> dict:
        return _typical_texts(depth)

    def data_report(self, data_dir: Path) -> Path:
        from .report import data_report

        return data_report(data_dir)

    def prompt_view(self, data_dir: Path, width: int):
        from .widgets import SceneView

        return SceneView(data_dir, width)

    def rows(self, cfg) -> list[Row]:
        return [Row(f"N{d}", (("depth", d),)) for d in cfg.depths]

    def build_data(self, cfg, row: Row, data_dir: Path, recipe) -> None:
        from .data import DataConfig, build_datasets
        from .forward_cot import recipe_generator

        build_datasets(DataConfig(out=str(data_dir), num_policies=cfg.num_policies, num_scenes=cfg.num_scenes,
                                  depth=dict(row.fields)["depth"], variant=cfg.variant, seed=cfg.seed,
                                  image_size=tuple(recipe.render_size), cot_share=cfg.cot_share,
                                  cot_source=cfg.cot_source, cot_model=recipe.name), progress=False,
                       generate=recipe_generator(recipe))  # forward CoT: the pipeline's base model, loaded if needed

    def completion_budget(self, cfg, data_dir: Path) -> int:
        """The recipe's budget if the pipeline sets one, else a forward CoT's (`forward_cot.cot_budget`)."""
        from ...folders import read_json
        from .forward_cot import cot_budget

        depth = int(read_json(Path(data_dir) / "summary.json", "Rebuild the data there.")["config"]["depth"])
        return cfg.max_new_tokens or cot_budget(depth)

    # ---------------------------------------------------------------- answers
    def parse(self, completion) -> str | None:
        return parse_answer(completion)

    def is_correct(self, answer: str | None, gold) -> bool:
        return answer is not None and gold is not None and answer == str(gold).strip()

    # ---------------------------------------------------------------- evaluation
    def score_rows(self, rows, completions, method: str = "", setting: str = "no_policy") -> list[dict]:
        from .evaluate import score_rows

        return score_rows(rows, completions, method, setting)

    def summarize(self, rows: list[dict]) -> list[dict]:
        from .evaluate import summarize

        return summarize(rows)

    def evaluate(self, method: str, model, processor, data_dir: Path, cfg) -> dict:
        """Accuracy with no policy (In-Context: with it), branching error and referral on the main rows; the
        secondary evaluations (policy back in context, override, perception) each with its own n and interval."""
        from .data import load_policies
        from .evaluate import branching_error, error_parts, perception, referral_scores, summarize

        kw = dict(limit=cfg.eval_limit, max_new_tokens=self.completion_budget(cfg, data_dir), method=method)
        setting = "in_context" if method == "In-Context" else "no_policy"
        rows = self.evaluate_accuracy(model, processor, data_dir, setting, **kw)
        main = summarize(rows)[0]
        res = {"accuracy": main["accuracy"], "n": len(rows), "interval_95": main["interval_95"],
               "errors": error_parts(rows),  # where the wrong chains broke first: what the model gets wrong
               "branching_error": branching_error(rows),
               # the referral judge on at most 100 rows, evenly spaced so that every policy is in them
               "referral": referral_scores(rows[::-(-len(rows) // 100) or 1], load_policies(data_dir)),
               # per-row outcomes, ids shared by every method: a paired test between methods (exact McNemar)
               "rows": [{"id": r["id"], "correct": bool(r["correct"])} for r in rows]}
        res["ns"], res["intervals"] = {}, {}
        for key in (["policy_in_context"] if method != "In-Context" else []) + ["override"]:
            setting = "in_context" if key == "policy_in_context" else key
            srows = self.evaluate_accuracy(model, processor, data_dir, setting,
                                           **{**kw, "limit": cfg.side_limit or cfg.eval_limit})
            s = summarize(srows)[0]
            res[key], res["ns"][key], res["intervals"][key] = s["accuracy"], len(srows), s["interval_95"]
        if cfg.forgetting:
            res["perception"], res["ns"]["perception"], res["intervals"]["perception"] = perception(
                model, processor, min(cfg.side_limit or cfg.eval_limit or 40, len(rows)))
        res["examples"] = [{k: r[k] for k in ("gold", "parsed", "completion")} for r in rows[:3]]
        return res

    # ---------------------------------------------------------------- results
    def paper_table(self) -> dict:
        from ...paper import paper_table

        return paper_table()

    def table(self, results: dict) -> str:
        from .report import clevr_table

        return clevr_table(results)

    def report(self, out: Path, results: dict) -> Path:
        from .report import pipeline_report

        return pipeline_report(out, results)


@functools.lru_cache(maxsize=None)
def _typical_texts(depth: int) -> dict:
    """A depth-N policy, its gold CoTs on 16 scenes, the query and a boxed answer."""
    from .data import query_text
    from .policy import sample_policy
    from .scenes import sample_scene

    p = sample_policy(depth=depth, rng=0)
    return {"policy": p.text(), "cots": [p.gold_cot(sample_scene(i)) for i in range(16)], "query": query_text(p.name),
            "answer": "\\boxed{Case 12}"}
