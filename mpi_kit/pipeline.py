"""The paper's comparison end to end: every method at every N, every evaluation, in one resumable run.

Each method is a chain of cached stages (a stage folder with a finished summary.json is reused, an unfinished one
resumes from its checkpoint), so a rerun after an interruption continues where it stopped:

    In-Context            base model, policy in the prompt
    Direct SFT            sft(direct)
    CoT SFT               sft(cot)
    VM-CPT + CoT SFT      cpt -> sft(cot)
    CoT SFT + GRPO/DAPO   sft(cot) -> rl
    TriMPI w/ GRPO        cpt -> sft(cot) -> rl(grpo)
    TriMPI w/ PoRo-X      cpt -> sft(cot) -> rl(X, PolicyRollout)
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .paper import METHODS, paper_table

# stage name -> (kind, parent stage, keyword arguments)
STAGES = {
    "direct_sft": ("sft", None, {"mode": "direct"}),
    "cot_sft": ("sft", None, {"mode": "cot"}),
    "vm_cpt": ("cpt", None, {}),
    "vmcpt_cot_sft": ("sft", "vm_cpt", {"mode": "cot"}),
    "cot_sft_grpo": ("rl", "cot_sft", {"algo": "grpo"}),
    "cot_sft_dapo": ("rl", "cot_sft", {"algo": "dapo"}),
    "trimpi_grpo": ("rl", "vmcpt_cot_sft", {"algo": "grpo"}),
    "trimpi_poro_grpo": ("rl", "vmcpt_cot_sft", {"algo": "grpo", "policy_rollout": True}),
    "trimpi_poro_dapo": ("rl", "vmcpt_cot_sft", {"algo": "dapo", "policy_rollout": True}),
}
METHOD_STAGE = {"In-Context": None, "Direct SFT": "direct_sft", "CoT SFT": "cot_sft",
                "VM-CPT + CoT SFT": "vmcpt_cot_sft", "CoT SFT + GRPO": "cot_sft_grpo",
                "CoT SFT + DAPO": "cot_sft_dapo", "TriMPI w/ GRPO": "trimpi_grpo",
                "TriMPI w/ PoRo-GRPO": "trimpi_poro_grpo", "TriMPI w/ PoRo-DAPO": "trimpi_poro_dapo"}
DEMO_METHODS = ("In-Context", "CoT SFT", "CoT SFT + GRPO", "TriMPI w/ PoRo-GRPO")


@dataclass
class PipelineConfig:
    """What to run. Steps per stage come from the recipe unless given here."""
    out: str = field(default="runs/pipeline", metadata={"help": "output folder (stages, results.json, report)"})
    recipe: str = field(default="tiny", metadata={"help": "recipe name"})
    depths: tuple[int, ...] = field(default=(2, 4, 6), metadata={"help": "policy depths N"})
    methods: tuple[str, ...] = field(default=tuple(METHODS), metadata={"help": "methods (paper names)"})
    num_policies: int = field(default=4, metadata={"help": "K policies per N"})
    num_scenes: int = field(default=200, metadata={"help": "M scenes per N (shared by the policies)"})
    variant: str = field(default="T", metadata={"help": "T or M policies"})
    seed: int = field(default=0, metadata={"help": "data and training seed"})
    cpt_steps: int | None = field(default=None, metadata={"help": "VM-CPT optimizer steps (default: recipe)"})
    sft_steps: int | None = field(default=None, metadata={"help": "SFT optimizer steps (default: recipe)"})
    rl_steps: int | None = field(default=None, metadata={"help": "RL optimizer steps (default: recipe)"})
    eval_limit: int | None = field(default=None, metadata={"help": "examples per evaluation (default: all)"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "generation budget at evaluation (default: 24 + 24 N; a gold CoT of depth N is ~22 N + 4 tiny-tokenizer tokens)"})
    forgetting: bool = field(default=True, metadata={"help": "measure perception/counting before and after"})
    model: str | None = field(default=None, metadata={"help": "override the recipe's model path"})


def _done(stage_dir: Path) -> bool:
    s = stage_dir / "summary.json"
    return s.exists() and json.loads(s.read_text()).get("completed", False)


def run_stage(name: str, root: Path, data_dir: Path, cfg: PipelineConfig, overrides: dict) -> Path:
    """Run (or reuse) stage `name` and its parents under `root`; returns its folder."""
    kind, parent, kw = STAGES[name]
    init = run_stage(parent, root, data_dir, cfg, overrides) if parent else None
    out = root / name
    if _done(out):
        return out
    common = dict(init=str(init) if init else None, **overrides)
    if kind == "sft":
        from .sft import run_sft
        run_sft(cfg.recipe, str(data_dir), str(out), kw["mode"], max_steps=cfg.sft_steps, **common)
    elif kind == "cpt":
        from .cpt import run_cpt
        run_cpt(cfg.recipe, str(data_dir), str(out), max_steps=cfg.cpt_steps, **common)
    else:
        from .recipes import get_recipe
        from .rl import run_rl
        algo = kw["algo"]
        # rollouts get the evaluation's budget when the recipe's is shorter: a CoT cut off before its \boxed{}
        # answer earns no reward, so every advantage would be zero
        budget = max(getattr(get_recipe(cfg.recipe, **overrides), algo).max_completion_length,
                     completion_budget(cfg, _depth(data_dir)))
        run_rl(cfg.recipe, str(data_dir), str(out), algo, kw.get("policy_rollout", False),
               max_steps=cfg.rl_steps, **{f"{algo}.max_completion_length": budget, **common})
    return out


def _depth(data_dir: Path) -> int:
    return int(json.loads((Path(data_dir) / "summary.json").read_text())["config"]["depth"])


def completion_budget(cfg: PipelineConfig, depth: int) -> int:
    """Tokens a model may write at N = depth: a gold CoT of depth N is ~22 N + 4 tiny-tokenizer tokens."""
    return cfg.max_new_tokens or 24 + 24 * depth


def load_for_eval(cfg: PipelineConfig, stage_dir: Path | None, overrides: dict):
    from .training import load_stage_model, stage_recipe

    recipe = stage_recipe(cfg.recipe, str(stage_dir) if stage_dir else None, **overrides)
    model, processor = load_stage_model(recipe, str(stage_dir) if stage_dir else None, trainable=False)
    return model.eval(), processor


def evaluate_method(method: str, model, processor, data_dir: Path, cfg: PipelineConfig) -> dict:
    """Every evaluation of one trained model at one N, as a dict of tidy numbers."""
    from .data import load_kit_data, load_policies
    from .evaluate import branching_error, evaluate_accuracy, referral_scores, summarize

    depth = int(load_kit_data(data_dir, "eval")["no_policy"][0]["depth"])
    kw = dict(limit=cfg.eval_limit, max_new_tokens=completion_budget(cfg, depth), method=method)
    main_setting = "in_context" if method == "In-Context" else "no_policy"
    rows = evaluate_accuracy(model, processor, data_dir, main_setting, **kw)
    res = {"accuracy": summarize(rows)[0]["accuracy"], "n": len(rows),
           "branching_error": branching_error(rows),
           "referral": referral_scores(rows[:100], load_policies(data_dir))}
    if method != "In-Context":
        res["policy_in_context"] = summarize(evaluate_accuracy(model, processor, data_dir, "in_context", **kw))[0][
            "accuracy"]
    res["override"] = summarize(evaluate_accuracy(model, processor, data_dir, "override", **kw))[0]["accuracy"]
    if cfg.forgetting:
        from .pretrain import evaluate as general
        g = general(model, processor, n_perception=cfg.eval_limit or 40, n_policy=0, depths=(), progress=False)
        res["perception"] = round(100 * g["perception"], 2)
    res["examples"] = [{k: r[k] for k in ("gold", "parsed", "completion")} for r in rows[:3]]
    return res


def run_pipeline(cfg: PipelineConfig | None = None, **kw) -> dict:
    """Build data, train every method's stages (cached), evaluate, write results.json and report.html."""
    from .data import DataConfig, build_datasets
    from .evaluate import efficiency
    from .recipes import get_recipe

    cfg = cfg or PipelineConfig(**kw)
    unknown = set(cfg.methods) - set(METHOD_STAGE)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHOD_STAGE)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"model": cfg.model} if cfg.model else {}
    recipe = get_recipe(cfg.recipe, **overrides)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(config={**asdict(cfg), "depths": list(cfg.depths), "methods": list(cfg.methods)},
                   recipe=recipe.to_dict(), paper=paper_table())
    results.setdefault("methods", {})
    results.setdefault("efficiency", {})
    t0 = time.time()
    jobs = [(d, m) for d in cfg.depths for m in cfg.methods]
    for depth, method in tqdm(jobs, desc="pipeline"):
        key = f"N{depth}/{method}"
        root = out / f"N{depth}"
        data_dir = root / "data"
        if not (data_dir / "summary.json").exists():
            build_datasets(DataConfig(out=str(data_dir), num_policies=cfg.num_policies, num_scenes=cfg.num_scenes,
                                      depth=depth, variant=cfg.variant, seed=cfg.seed,
                                      image_size=tuple(recipe.render_size)), progress=False)
        if key in results["methods"]:
            continue  # evaluated in an earlier run
        stage = METHOD_STAGE[method]
        stage_dir = run_stage(stage, root, data_dir, cfg, overrides) if stage else None
        model, processor = load_for_eval(cfg, stage_dir, overrides)
        res = evaluate_method(method, model, processor, data_dir, cfg)
        res.update(depth=depth, method=method, stage_dir=str(stage_dir) if stage_dir else None)
        if stage_dir is not None:
            s = json.loads((stage_dir / "summary.json").read_text())
            res["train"] = {"steps": s["steps"], "seconds": s["seconds"]}
        if str(depth) not in results["efficiency"] and method == "In-Context":
            results["efficiency"][str(depth)] = efficiency(model, processor, data_dir)
        results["methods"][key] = res
        results_path.write_text(json.dumps(results, indent=1))  # saved after every method: resumable
    results["seconds_this_run"] = round(time.time() - t0, 1)
    results_path.write_text(json.dumps(results, indent=1))
    from .report import pipeline_report
    results["report"] = str(pipeline_report(out, results))
    return results


def table(results: dict) -> str:
    """A plain-text table: methods down, N across, our accuracy (paper 7B in brackets)."""
    depths = sorted({r["depth"] for r in results["methods"].values()})
    acc = results["paper"]["accuracy_7b"]
    lines = [f"{'method':<22}" + "".join(f"{'N=' + str(d):>18}" for d in depths)]
    for m in METHODS:
        cells = []
        for d in depths:
            r = results["methods"].get(f"N{d}/{m}")
            p = acc.get(str(d), acc.get(d, {})).get(m)
            cells.append(f"{r['accuracy']:6.1f}" + (f" ({p:5.1f})" if p is not None else " " * 8) if r else "-")
        if any(c != "-" for c in cells):
            lines.append(f"{m:<22}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines) + "\n(ours: accuracy % with no policy in context; In-Context has it; paper 7B in brackets)"
