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

`dataset="gta"` runs the same stages on GTAPolicy next-tool-call data (`gta_data.build_gta_datasets`): one "GTA"
row instead of one per N, RL with the GTA reward (`gta_rewards`), scores = Tool Acc / Arg Score / Overall
(`evaluate_gta`), In-Context, CoT SFT, CoT SFT + GRPO and TriMPI w/ PoRo-GRPO by default, the paper's GTA numbers
beside ours.
"""
from __future__ import annotations

import json
import time
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from .paper import METHODS, gta_paper_table, paper_table

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
GTA_METHODS = DEMO_METHODS  # the methods issue 7 compares on GTAPolicy
GTA_NEW_TOKENS = 256  # the longest GTA reverse CoT + call is ~250 tiny-tokenizer tokens
GTA_ONLY = ("dataset", "num_instances", "gta_root")  # left out of a ClevrPolicy run's results.json config
CLEVR_ONLY = ("depths", "num_policies", "num_scenes", "variant")  # left out of a GTA run's


@dataclass
class PipelineConfig:
    """What to run. Steps per stage come from the recipe unless given here."""
    out: str = field(default="runs/pipeline", metadata={"help": "output folder (stages, results.json, report)"})
    recipe: str = field(default="tiny", metadata={"help": "recipe name"})
    depths: tuple[int, ...] = field(default=(2, 4, 6), metadata={"help": "policy depths N"})
    methods: tuple[str, ...] = field(default=tuple(METHODS), metadata={"help": "methods (paper names)"})
    num_policies: int = field(default=4, metadata={"help": "K policies per N"})
    num_scenes: int = field(default=260, metadata={"help": "M scenes per N (shared by the policies); 260 holds out 52, "
                                                           "so 4 policies give 208 held-out questions (n >= 200)"})
    variant: str = field(default="T", metadata={"help": "T or M policies"})
    seed: int = field(default=0, metadata={"help": "data and training seed"})
    cpt_steps: int | None = field(default=None, metadata={"help": "VM-CPT optimizer steps (default: recipe)"})
    sft_steps: int | None = field(default=None, metadata={"help": "SFT optimizer steps (default: recipe)"})
    rl_steps: int | None = field(default=None, metadata={"help": "RL optimizer steps (default: recipe)"})
    eval_limit: int | None = field(default=None, metadata={"help": "examples per evaluation (default: all)"})
    side_limit: int | None = field(default=None, metadata={
        "help": "examples for the secondary evaluations (policy back in context, override, perception; default: "
                "eval_limit). Each keeps its own n and interval in results.json."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "generation budget at evaluation (default: 24 + 24 N; a gold CoT of depth N is ~22 N + 4 tiny-tokenizer tokens)"})
    forgetting: bool = field(default=True, metadata={"help": "measure perception/counting before and after"})
    model: str | None = field(default=None, metadata={"help": "override the recipe's model path"})
    dataset: str = field(default="clevr", metadata={
        "help": "clevr (ClevrPolicy, one row per N) or gta (GTAPolicy tool calls, one row; depths ignored; "
                "methods default to In-Context, CoT SFT, CoT SFT + GRPO, TriMPI w/ PoRo-GRPO)"})
    num_instances: int = field(default=200, metadata={"help": "gta: generated instances (train + test)"})
    gta_root: str | None = field(default=None, metadata={
        "help": "gta: the GTA benchmark folder (dataset.json + image/) instead of generated instances"})


def demo_config(out: str = "runs/demo", seed: int = 0, eval_limit: int = 200) -> PipelineConfig:
    """`make demo`: TriMPI and the key baselines at N = 4 on the tiny recipe, sized for 15 minutes on 2 CPU cores.
    CoT SFT gets the steps to internalize four N = 4 policies (fewer leave it far below In-Context); every main
    cell is scored on `eval_limit` held-out questions, the secondary evaluations on 100 (dev/LOG.md: the sizing)."""
    return PipelineConfig(out=out, depths=(4,), methods=DEMO_METHODS, seed=seed, num_policies=4, num_scenes=260,
                          eval_limit=eval_limit, side_limit=min(100, eval_limit), cpt_steps=30, sft_steps=480,
                          rl_steps=24, forgetting=True)


def config_record(cfg: PipelineConfig) -> dict:
    """The configuration as results.json records it (JSON types; the other task's fields left out)."""
    config = {**asdict(cfg), "depths": list(cfg.depths), "methods": list(cfg.methods)}
    return {k: v for k, v in config.items() if k not in (CLEVR_ONLY if cfg.dataset == "gta" else GTA_ONLY)}


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
        gta = cfg.dataset == "gta"
        budget = max(getattr(get_recipe(cfg.recipe, **overrides), algo).max_completion_length,
                     completion_budget(cfg, None if gta else _depth(data_dir)))
        if gta:  # GTAPolicy: the tool-call score is the reward
            from .gta_rewards import GTA_REWARD_FUNCS, GTA_REWARD_WEIGHTS
            common.update(reward_funcs=GTA_REWARD_FUNCS, reward_weights=GTA_REWARD_WEIGHTS)
        run_rl(cfg.recipe, str(data_dir), str(out), algo, kw.get("policy_rollout", False),
               max_steps=cfg.rl_steps, **{f"{algo}.max_completion_length": budget, **common})
    return out


def _depth(data_dir: Path) -> int:
    return int(json.loads((Path(data_dir) / "summary.json").read_text())["config"]["depth"])


def completion_budget(cfg: PipelineConfig, depth: int | None) -> int:
    """Tokens a model may write at N = depth: a gold CoT of depth N is ~22 N + 4 tiny-tokenizer tokens.
    depth None: a GTA tool call (GTA_NEW_TOKENS)."""
    if depth is None:
        return cfg.max_new_tokens or GTA_NEW_TOKENS
    return cfg.max_new_tokens or 24 + 24 * depth


def load_for_eval(cfg: PipelineConfig, stage_dir: Path | None, overrides: dict):
    from .training import load_stage_model, stage_recipe

    recipe = stage_recipe(cfg.recipe, str(stage_dir) if stage_dir else None, **overrides)
    model, processor = load_stage_model(recipe, str(stage_dir) if stage_dir else None, trainable=False)
    return model.eval(), processor


def evaluate_method(method: str, model, processor, data_dir: Path, cfg: PipelineConfig) -> dict:
    """Every evaluation of one trained model at one N, as a dict of tidy numbers."""
    from .data import load_policies
    from .evaluate import branching_error, evaluate_accuracy, referral_scores, summarize

    if cfg.dataset == "gta":
        return evaluate_gta_method(method, model, processor, data_dir, cfg)
    depth = _depth(data_dir)
    kw = dict(limit=cfg.eval_limit, max_new_tokens=completion_budget(cfg, depth), method=method)
    main_setting = "in_context" if method == "In-Context" else "no_policy"
    rows = evaluate_accuracy(model, processor, data_dir, main_setting, **kw)
    res = {"accuracy": summarize(rows)[0]["accuracy"], "n": len(rows), "interval_95": interval(rows),
           "branching_error": branching_error(rows),
           "referral": referral_scores(rows[:100], load_policies(data_dir))}
    # the secondary evaluations: each accuracy with its own n and 95% interval ("ns", "intervals")
    res["ns"], res["intervals"] = {}, {}
    side = (["policy_in_context"] if method != "In-Context" else []) + ["override"]
    for key in side:
        srows = evaluate_accuracy(model, processor, data_dir, "in_context" if key == "policy_in_context" else key,
                                  **{**kw, "limit": cfg.side_limit or cfg.eval_limit})
        res[key] = summarize(srows)[0]["accuracy"]
        res["ns"][key], res["intervals"][key] = len(srows), interval(srows)
    if cfg.forgetting:
        res["perception"], res["ns"]["perception"], res["intervals"]["perception"] = perception(model, processor, cfg)
    res["examples"] = [{k: r[k] for k in ("gold", "parsed", "completion")} for r in rows[:3]]
    return res


def rollout_steps(stage_dir: Path) -> list[dict]:
    """Per RL step, from the stage's rollout log: the share of groups with zero reward variance (no signal), the
    share PolicyRollout rescued (no correct no-policy completion, a correct policy-aware one) and each half's
    mean reward."""
    from .inspector import load_rollouts, step_stats

    cols = ("step", "groups", "frac_zero_std", "frac_rescued", "reward_no_policy", "reward_policy_aware")
    stats = step_stats(load_rollouts(stage_dir))
    return [{c: (None if v != v else round(float(v), 4)) for c, v in zip(cols, r)}  # NaN -> None (no such half)
            for r in stats[list(cols)].itertuples(index=False)]


def interval(rows: list[dict]) -> list[float]:
    """95% Wilson interval (%) of the rows' accuracy: `correct` per row."""
    from .evaluate import wilson_percent

    return wilson_percent(sum(bool(r["correct"]) for r in rows), len(rows))


def beyond(results: dict) -> list[str]:
    """Pairs of methods at one N whose 95% intervals do not overlap, higher first: the differences that are not
    noise at this n."""
    by_depth: dict = {}
    for r in results["methods"].values():
        if "interval_95" in r:
            by_depth.setdefault(r.get("depth", "GTA"), []).append(r)
    out = []
    for d, rs in sorted(by_depth.items(), key=lambda kv: str(kv[0])):
        for a in rs:
            for b in rs:
                if a["interval_95"][0] > b["interval_95"][1]:
                    out.append(f"N={d}: {a['method']} {a['accuracy']:.1f} > {b['method']} {b['accuracy']:.1f}")
    return out


def perception(model, processor, cfg: PipelineConfig) -> tuple[float, int, list[float]]:
    """Forgetting: the base abilities (existence and counting questions) of a trained model: accuracy (%), n and
    its 95% interval."""
    from .evaluate import wilson_percent
    from .pretrain import evaluate as general

    n = cfg.side_limit or cfg.eval_limit or 40  # n existence + n counting questions
    g = general(model, processor, n_perception=n, n_policy=0, depths=(), progress=False)
    return round(100 * g["perception"], 2), 2 * n, wilson_percent(round(g["perception"] * 2 * n), 2 * n)


def evaluate_gta_method(method: str, model, processor, data_dir: Path, cfg: PipelineConfig) -> dict:
    """GTAPolicy: Tool Acc, Arg Score and Overall (%) with no policy (In-Context: with it), under the override and,
    for trained methods, with the policy back in context; forgetting as for ClevrPolicy."""
    from .gta_rewards import evaluate_gta, summarize

    kw = dict(limit=cfg.eval_limit, max_new_tokens=completion_budget(cfg, None), method=method)

    def scores(setting: str) -> tuple[list, dict]:
        rows = evaluate_gta(model, processor, data_dir, setting, **kw)
        return rows, {k: summarize(rows)[0][k] for k in ("tool", "args", "overall")}

    rows, main = scores("in_context" if method == "In-Context" else "no_policy")
    res = {**main, "n": len(rows)}
    if method != "In-Context":
        res["policy_in_context"] = scores("in_context")[1]
    res["override"] = scores("override")[1]
    if cfg.forgetting:
        res["perception"], n, ci = perception(model, processor, cfg)
        res["ns"], res["intervals"] = {"perception": n}, {"perception": ci}
    res["examples"] = [{k: r[k] for k in ("gold", "pred", "overall", "reason", "completion")} for r in rows[:3]]
    return res


def context_check(model, processor, data_dir: Path, limit: int | None = 8) -> dict:
    """The longest in-context prompt (policy + images + query) in tokens vs the positions the model was trained
    on. Longer prompts still run (RoPE has no position table and nothing truncates: generation, GRPO and SFT
    tokenize without truncation), but attention past the trained length is out of distribution, so a warning
    says so and results.json records it."""
    from trl.data_utils import prepare_multimodal_messages

    from .data import load_kit_data

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
        print(f"mpi-kit pipeline: warning: GTA prompts with the policy in context are up to {n} tokens, beyond the "
              f"{limit_pos} positions this model was trained on. They run (RoPE extrapolates; nothing truncates), "
              f"but In-Context scores and PolicyRollout's policy-aware rollouts are out of distribution; a Qwen "
              f"recipe (32k+ positions) has room for them.", file=sys.stderr)
    return out


def run_pipeline(cfg: PipelineConfig | None = None, **kw) -> dict:
    """Build data, train every method's stages (cached), evaluate, write results.json and report.html."""
    from .data import DataConfig, build_datasets
    from .evaluate import efficiency
    from .recipes import get_recipe

    from .data import DataError
    from .policy import MAX_DEPTH

    cfg = cfg or PipelineConfig(**kw)
    if cfg.dataset not in ("clevr", "gta"):
        raise DataError(f"dataset must be 'clevr' or 'gta', got {cfg.dataset!r}")
    if cfg.eval_limit is not None and cfg.eval_limit < 1:
        raise DataError(f"eval_limit must be >= 1 (examples per evaluation), got {cfg.eval_limit}")
    bad_depths = [d for d in cfg.depths if not 1 <= d <= MAX_DEPTH]
    if bad_depths:
        raise DataError(f"depths must be from 1 to {MAX_DEPTH} (the paper uses 2 4 6), got {bad_depths}")
    gta = cfg.dataset == "gta"
    if gta and tuple(cfg.methods) == tuple(METHODS):  # the default: the four methods compared on GTAPolicy
        cfg = replace(cfg, methods=GTA_METHODS)
    unknown = set(cfg.methods) - set(METHOD_STAGE)
    if unknown:
        raise DataError(f"unknown methods {sorted(unknown)}; choose from: {'; '.join(METHOD_STAGE)} (quote names "
                        f"with spaces, e.g. --methods 'CoT SFT' 'TriMPI w/ PoRo-GRPO')")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"model": cfg.model} if cfg.model else {}
    recipe = get_recipe(cfg.recipe, **overrides)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    config = config_record(cfg)
    results.update(config=config, recipe=recipe.to_dict(), paper=gta_paper_table() if gta else paper_table())
    if gta:
        results["dataset"] = "gta"
    results.setdefault("methods", {})
    results.setdefault("efficiency", {})
    t0 = time.time()
    jobs = [(d, m) for d in (("GTA",) if gta else cfg.depths) for m in cfg.methods]
    for depth, method in tqdm(jobs, desc="pipeline"):
        key = f"{depth}/{method}" if gta else f"N{depth}/{method}"
        root = out / (depth if gta else f"N{depth}")
        data_dir = root / "data"
        if gta and not (data_dir / "summary.json").exists():
            from .gta_data import GTADataConfig, build_gta_datasets
            build_gta_datasets(GTADataConfig(out=str(data_dir), gta_root=cfg.gta_root, seed=cfg.seed,
                                             num_instances=cfg.num_instances, image_size=tuple(recipe.render_size)))
        elif not (data_dir / "summary.json").exists():
            build_datasets(DataConfig(out=str(data_dir), num_policies=cfg.num_policies, num_scenes=cfg.num_scenes,
                                      depth=depth, variant=cfg.variant, seed=cfg.seed,
                                      image_size=tuple(recipe.render_size)), progress=False)
        if key in results["methods"]:
            continue  # evaluated in an earlier run
        stage = METHOD_STAGE[method]
        stage_dir = run_stage(stage, root, data_dir, cfg, overrides) if stage else None
        model, processor = load_for_eval(cfg, stage_dir, overrides)
        if gta and "context" not in results:
            results["context"] = context_check(model, processor, data_dir)
        res = evaluate_method(method, model, processor, data_dir, cfg)
        res.update(**({} if gta else {"depth": depth}), method=method,
                   stage_dir=str(stage_dir) if stage_dir else None)
        if stage_dir is not None:
            s = json.loads((stage_dir / "summary.json").read_text())
            res["train"] = {"steps": s["steps"], "seconds": s["seconds"]}
            if (stage_dir / "completions").is_dir():  # an RL stage: what its groups saw, step by step
                res["rollouts"] = rollout_steps(stage_dir)
        if str(depth) not in results["efficiency"] and method == "In-Context":
            results["efficiency"][str(depth)] = efficiency(model, processor, data_dir)
        results["methods"][key] = res
        results_path.write_text(json.dumps(results, indent=1))  # saved after every method: resumable
    results["seconds_this_run"] = round(time.time() - t0, 1)
    results_path.write_text(json.dumps(results, indent=1))
    from .report import gta_pipeline_report, pipeline_report
    results["report"] = str((gta_pipeline_report if gta else pipeline_report)(out, results))
    return results


def table(results: dict) -> str:
    """A plain-text table: methods down, N across, our accuracy (paper 7B in brackets)."""
    if results.get("dataset") == "gta":
        return gta_table(results)
    depths = sorted({r["depth"] for r in results["methods"].values()})
    acc = results["paper"]["accuracy_7b"]
    lines = [f"{'method':<22}" + "".join(f"{'N=' + str(d):>26}" for d in depths)]
    for m in METHODS:
        cells = []
        for d in depths:
            r = results["methods"].get(f"N{d}/{m}")
            p = acc.get(str(d), acc.get(d, {})).get(m)
            ci = f" [{r['interval_95'][0]:4.1f}-{r['interval_95'][1]:4.1f}]" if r and "interval_95" in r else ""
            cells.append(f"{r['accuracy']:5.1f}{ci}" + (f" ({p:4.1f})" if p is not None else "") if r else "-")
        if any(c != "-" for c in cells):
            lines.append(f"{m:<22}" + "".join(f"{c:>26}" for c in cells))
    ns = sorted({r["n"] for r in results["methods"].values() if "n" in r})
    notes = beyond(results)
    return ("\n".join(lines) + f"\n(ours: accuracy % with no policy in context, In-Context has it; [95% Wilson "
            f"interval], n = {'/'.join(map(str, ns))} per cell; paper 7B in brackets)" +
            ("\nbeyond the intervals: " + "; ".join(notes) if notes else
             "\nno two methods differ beyond their 95% intervals at this n") + rl_groups_note(results))


def rl_groups_note(results: dict) -> str:
    """One line per RL method: over its first quarter of steps, the share of groups with zero reward variance (no
    learning signal) and, for PoRo, the share it rescued (no-policy half all wrong, policy-aware half right)."""
    out = []
    for key, r in results["methods"].items():
        ro = r.get("rollouts") or []
        if not ro:
            continue
        first = ro[:max(1, len(ro) // 4)]
        groups = sum(x["groups"] or 0 for x in first) or 1
        share = lambda k: 100 * sum((x[k] or 0) * (x["groups"] or 0) for x in first) / groups  # noqa: E731
        line = f"{key}: first {len(first)} RL steps, {share('frac_zero_std'):.0f}% of {groups:.0f} groups zero-variance"
        if "PoRo" in r["method"]:
            line += f", {share('frac_rescued'):.0f}% rescued by PolicyRollout"
        out.append(line)
    return ("\nRL groups: " + "; ".join(out)) if out else ""


def gta_table(results: dict) -> str:
    """GTAPolicy: methods down; Tool Acc, Arg Score, Overall and Override overall across (paper 7B in brackets)."""
    paper = results["paper"]
    cols = (("tool", None, 0), ("args", None, 1), ("overall", None, 2), ("override", "overall", 2))
    lines = [f"{'method':<22}" + "".join(f"{c if c != 'override' else 'override overall':>18}" for c, _, _ in cols)]
    for m in METHODS:
        r = results["methods"].get(f"GTA/{m}")
        if not r:
            continue
        cells = []
        for c, sub, i in cols:
            ours = r.get(c, {}).get(sub) if sub else r.get(c)
            ref = (paper["gta_override_7b"] if c == "override" else paper["gta_7b"]).get(m)
            p = ref[i] if ref else None
            cells.append(("-" if ours is None else f"{ours:6.1f}") + (f" ({p:5.1f})" if p is not None else " " * 8))
        lines.append(f"{m:<22}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines) + ("\n(GTAPolicy, ours: % with no policy in context; In-Context has it; override: the "
                               "changed rules in context; paper Qwen2.5-VL-7B in brackets, Tables 1-3)")
