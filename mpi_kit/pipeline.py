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

and, beside the paper's methods (`BEYOND_PAPER`, asked for by name; `mpi_kit.distill`):

    Policy Distillation            distill (the base model with its policy teaches itself without it)
    VM-CPT + Policy Distillation   cpt -> distill

The stages are the same for every task; the task (`mpi_kit.tasks`, `PipelineConfig.dataset`) says what the rows
are (ClevrPolicy: one per N; GTAPolicy: one, "GTA"), builds their data, evaluates a trained model, and prints and
draws the results beside the paper's numbers.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from .folders import StateError, lock, read_json, write_json
from .paper import METHODS

# a method's chain, one folder per step: step -> (the stage it trains, from `mpi_kit.stages`; the step it starts from)
STEPS = {
    "direct_sft": ("sft_direct", None),
    "cot_sft": ("sft_cot", None),
    "vm_cpt": ("vm_cpt", None),
    "vmcpt_cot_sft": ("sft_cot", "vm_cpt"),
    "cot_sft_grpo": ("grpo", "cot_sft"),
    "cot_sft_dapo": ("dapo", "cot_sft"),
    "trimpi_grpo": ("grpo", "vmcpt_cot_sft"),
    "trimpi_grpo_2g": ("grpo", "vmcpt_cot_sft"),
    "trimpi_poro_grpo": ("poro_grpo", "vmcpt_cot_sft"),
    "trimpi_poro_dapo": ("poro_dapo", "vmcpt_cot_sft"),
    "distill": ("distill", None),
    "vmcpt_distill": ("distill", "vm_cpt"),
}
METHOD_STAGE = {"In-Context": None, "Direct SFT": "direct_sft", "CoT SFT": "cot_sft",
                "VM-CPT + CoT SFT": "vmcpt_cot_sft", "CoT SFT + GRPO": "cot_sft_grpo",
                "CoT SFT + DAPO": "cot_sft_dapo", "TriMPI w/ GRPO": "trimpi_grpo",
                "TriMPI w/ GRPO-2G": "trimpi_grpo_2g", "TriMPI w/ PoRo-GRPO": "trimpi_poro_grpo",
                "TriMPI w/ PoRo-DAPO": "trimpi_poro_dapo", "Policy Distillation": "distill",
                "VM-CPT + Policy Distillation": "vmcpt_distill"}
# methods that are not the paper's (paper.METHODS stays its list, the default): run them by naming them
BEYOND_PAPER = ("Policy Distillation", "VM-CPT + Policy Distillation")
# GRPO-2G, the control for PolicyRollout: PoRo's start and sample count (2G no-policy completions a prompt), no policy
DOUBLE_G = {"trimpi_grpo_2g"}
DEMO_METHODS = ("In-Context", "CoT SFT", "CoT SFT + GRPO", "VM-CPT + CoT SFT", "TriMPI w/ GRPO-2G",
                "TriMPI w/ PoRo-GRPO")  # VM-CPT + CoT SFT: where both TriMPI methods start
# the paper's stage recipe on `tiny` (its data regime is data.PAPER_REGIME): CoT SFT as LoRA r = 8, merged before RL;
# RL full fine-tune with no KL term, each rollout batch of 4 prompts updated in 2 optimizer steps (the clip acts)
PAPER_STAGES = {"sft_cot.lora_r": 8, "sft_cot.learning_rate": 2e-3, "grpo.beta": 0.0, "grpo.rollout_prompts": 4,
                "grpo.updates_per_rollout": 2}


@dataclass
class PipelineConfig:
    """What to run. Steps per stage come from the recipe unless given here."""
    out: str = field(default="runs/pipeline", metadata={"help": "output folder (stages, results.json, report)"})
    recipe: str = field(default="tiny", metadata={"help": "recipe: a name, a model folder or hub id (or, from Python, "
                                                          "a Recipe)"})
    overrides: dict = field(default_factory=dict, metadata={
        "help": "recipe overrides for every stage, e.g. {'sft_cot.learning_rate': 1e-4} (CLI: --set KEY=VALUE)"})
    depths: tuple[int, ...] = field(default=(2, 4, 6), metadata={"help": "policy depths N"})
    methods: tuple[str, ...] = field(default=tuple(METHODS), metadata={"help": "methods (paper names)"})
    num_policies: int = field(default=4, metadata={"help": "K policies per N"})
    num_scenes: int = field(default=260, metadata={"help": "M scenes per N (shared by the policies); 260 holds out "
                                                           "52, "
                                                           "so 4 policies give 208 held-out questions (n >= 200)"})
    variant: str = field(default="T", metadata={"help": "T or M policies"})
    cot_share: float = field(default=1.0, metadata={"help": "clevr: DataConfig.cot_share (paper: 0.125)"})
    cot_source: str = field(default="gold", metadata={"help": "clevr: DataConfig.cot_source (paper: forward)"})
    seed: int = field(default=0, metadata={"help": "data and training seed"})
    cpt_steps: int | None = field(default=None, metadata={"help": "VM-CPT optimizer steps (default: recipe)"})
    sft_steps: int | None = field(default=None, metadata={"help": "SFT optimizer steps (default: recipe)"})
    rl_steps: int | None = field(default=None, metadata={"help": "RL optimizer steps (default: recipe)"})
    distill_steps: int | None = field(default=None, metadata={
        "help": "policy distillation optimizer steps (default: recipe)"})
    distill_source: str = field(default="teacher", metadata={
        "help": "policy distillation's completions: 'teacher' (written by the model with its policy in context, no "
                "labels needed) or 'cot' (the data's CoT rows)"})
    eval_limit: int | None = field(default=None, metadata={"help": "examples per evaluation (default: all)"})
    side_limit: int | None = field(default=None, metadata={
        "help": "examples for the secondary evaluations (policy back in context, override, perception; default: "
                "eval_limit). Each keeps its own n and interval in results.json."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "generation budget at evaluation (default: 24 + 24 N; a gold CoT of depth N is ~22 N + 4 "
                "tiny-tokenizer tokens)"})
    forgetting: bool = field(default=True, metadata={"help": "measure perception/counting before and after"})
    jobs: int = field(default=1, metadata={
        "help": "worker processes training and evaluating at once, each with cores / jobs torch threads (a stage "
                "several methods share is trained once, before any of them goes on); 1: one after another. Not a "
                "setting of the results: a rerun with other jobs reuses every finished stage"})
    model: str | None = field(default=None, metadata={"help": "override the recipe's model path"})
    dataset: str = field(default="clevr", metadata={
        "help": "the task (`mpi_kit.tasks`): clevr (ClevrPolicy, one row per N) or gta (GTAPolicy tool calls, one "
                "row; depths ignored; methods default to In-Context, CoT SFT, CoT SFT + GRPO, TriMPI w/ PoRo-GRPO)"})
    num_instances: int = field(default=200, metadata={"help": "gta: generated instances (train + test)"})
    gta_root: str | None = field(default=None, metadata={
        "help": "gta: the GTA benchmark folder (dataset.json + image/) instead of generated instances"})


def demo_config(out: str = "runs/demo", seed: int = 0, eval_limit: int = 200, jobs: int = 1) -> PipelineConfig:
    """`make demo`: TriMPI, its start, its GRPO-2G control and the key baselines at N = 4 in the paper's regime
    (scarce forward CoT, LoRA CoT SFT, RL whose clip acts, equal prompts per step), sized to a 15-minute budget on 2
    CPU cores. 1,000 scenes hold out 200, so the 200 evaluation rows are 200 different scenes (docs/results.md)."""
    from .tasks import get_task

    return PipelineConfig(out=out, depths=(4,), methods=DEMO_METHODS, seed=seed, num_policies=4, num_scenes=1000,
                          **get_task("clevr").paper_regime, eval_limit=eval_limit, side_limit=min(100, eval_limit),
                          cpt_steps=120, sft_steps=240, rl_steps=96, forgetting=True, overrides=dict(PAPER_STAGES),
                          jobs=jobs)


def config_record(cfg: PipelineConfig) -> dict:
    """The configuration as results.json records it (JSON types; the fields only other tasks read left out)."""
    from .tasks import TASKS, get_task

    task = get_task(cfg.dataset)
    others = {f for t in TASKS.values() if t is not task for f in t.config_fields} - set(task.config_fields)
    if not cfg.overrides:
        others.add("overrides")  # recorded only when there are some
    others |= {f for f, default in (("cot_share", 1.0), ("cot_source", "gold"), ("distill_steps", None),
                                    ("distill_source", "teacher")) if getattr(cfg, f) == default}
    others.add("jobs")  # how the work is spread over processes, not what it is
    config = {**asdict(cfg), "depths": list(cfg.depths), "methods": list(cfg.methods),
              "recipe": cfg.recipe if isinstance(cfg.recipe, str) else cfg.recipe.name}
    return {k: v for k, v in config.items() if k not in others}


RUN_FILE = "mpi_pipeline.json"  # the settings a pipeline folder was started with: a rerun with others is refused


def pipeline_settings(cfg: PipelineConfig, recipe) -> dict:
    """What decides a pipeline's results: every configuration field but `out` (data, steps, seed, evaluation sizes,
    methods, overrides) and the recipe they resolve to."""
    config = {k: v for k, v in config_record(cfg).items() if k != "out"}
    return {"config": config, "recipe": recipe.to_dict()}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def open_pipeline(out: Path, settings: dict) -> None:
    """Check `out` before anything runs: a folder started with other settings is refused, naming each difference,
    as single stages do. Methods may be added to a finished comparison (each is trained and scored on its own);
    leaving one out is refused, since results.json would still describe it."""
    run_file, results_file = out / RUN_FILE, out / "results.json"
    fix = f"Use a new --out, or delete {out} to start this comparison over."
    if run_file.exists():
        saved = read_json(run_file, fix)
    elif results_file.exists():  # a comparison written before the settings had their own file
        old = read_json(results_file, fix)
        saved = {"config": {k: v for k, v in old.get("config", {}).items() if k != "out"},
                 "recipe": old.get("recipe")}
    else:
        write_json(run_file, settings)
        return
    was, now = _flat(saved), _flat(settings)
    # a recipe setting the kit gained after this folder was started (absent there) is none of its runs' settings
    now = {k: v for k, v in now.items() if k in was or not k.startswith("recipe.")}
    dropped = [m for m in was.get("config.methods") or [] if m not in now["config.methods"]]
    diff = [f"{k}: {json.dumps(was.get(k))} there, {json.dumps(now.get(k))} asked"
            for k in sorted(set(was) | set(now)) if k != "config.methods" and was.get(k) != now.get(k)]
    if dropped:
        diff.append(f"methods: {', '.join(dropped)} there but not asked")
    if diff:
        raise StateError(f"--out {out} holds a comparison run with other settings ({'; '.join(diff)}). {fix}")
    write_json(run_file, settings)  # the methods asked now, a superset of those before


def run_stage(name: str, root: Path, data_dir: Path, cfg: PipelineConfig, overrides: dict,
              done: frozenset = frozenset()) -> Path:
    """Run (or reuse) step `name` and the steps it starts from under `root`; returns its folder. Steps in `done`
    were trained by this run already and are taken as they are: a parallel run's processes would otherwise queue
    on the lock of a stage two of them reuse at once."""
    from .stages import STAGES

    if name in done:
        return root / name
    stage, parent = STEPS[name]
    st = STAGES[stage]
    init = run_stage(parent, root, data_dir, cfg, overrides, done) if parent else None
    out = root / name  # a finished stage with the same settings is reused; one with others is refused (open_run)
    common = dict(init=str(init) if init else None, **overrides)
    if st.kind == "sft":
        from .sft import run_sft
        run_sft(cfg.recipe, str(data_dir), str(out), st.mode, max_steps=cfg.sft_steps, **common)
    elif st.kind == "cpt":
        from .cpt import run_cpt
        run_cpt(cfg.recipe, str(data_dir), str(out), max_steps=cfg.cpt_steps, **common)
    elif st.kind == "distill":
        from .distill import run_distill
        from .recipes import as_recipe
        from .tasks import get_task

        # the teacher writes up to the evaluation's budget, as rollouts do: a chain cut before its answer teaches less
        settings = getattr(as_recipe(cfg.recipe, **overrides), st.section)
        budget = max(settings.max_completion_length, get_task(cfg.dataset).completion_budget(cfg, data_dir))
        run_distill(cfg.recipe, str(data_dir), str(out), max_steps=cfg.distill_steps, source=cfg.distill_source,
                    **{f"{st.section}.max_completion_length": budget, **common})
    else:
        from .recipes import as_recipe
        from .rl import run_rl
        from .tasks import get_task

        algo = st.algo
        # rollouts get the evaluation's budget when the recipe's is shorter: a CoT cut off before its answer earns
        # no reward, so every advantage would be zero. The rewards are the data's task's (`rl_trainer` asks it).
        settings = getattr(as_recipe(cfg.recipe, **overrides), st.section)
        budget = max(settings.max_completion_length, get_task(cfg.dataset).completion_budget(cfg, data_dir))
        G = 2 * settings.num_generations if name in DOUBLE_G else None  # None: the recipe's G
        run_rl(cfg.recipe, str(data_dir), str(out), algo, st.policy_rollout, max_steps=cfg.rl_steps,
               num_generations=G, **{f"{st.section}.max_completion_length": budget, **common})
    return out


def load_for_eval(cfg: PipelineConfig, stage_dir: Path | None, overrides: dict):
    """A trained stage's model (None: the base model) in eval mode, loaded without library progress bars: the
    pipeline's own bar is the one a learner reads."""
    from .progress import library_bars_off
    from .training import load_stage_model, stage_recipe

    recipe = stage_recipe(cfg.recipe, str(stage_dir) if stage_dir else None, **overrides)
    with library_bars_off():
        model, processor = load_stage_model(recipe, str(stage_dir) if stage_dir else None, trainable=False)
    return model.eval(), processor


def run_pipeline(cfg: PipelineConfig | None = None, **kw) -> dict:
    """Build data, train every method's stages (cached), evaluate, write results.json and report.html. What the
    data, the evaluations and the report are is the task's (`cfg.dataset`, `mpi_kit.tasks`)."""
    from .data import DataError
    from .models import require_backend
    from .recipes import as_recipe
    from .tasks import get_task

    cfg = cfg or PipelineConfig(**kw)
    task = get_task(cfg.dataset)
    if cfg.eval_limit is not None and cfg.eval_limit < 1:
        raise DataError(f"eval_limit must be >= 1 (examples per evaluation), got {cfg.eval_limit}")
    task.check(cfg)
    if tuple(cfg.methods) == tuple(METHODS):  # the default: the methods this task compares
        cfg = replace(cfg, methods=tuple(task.methods))
    unknown = set(cfg.methods) - set(METHOD_STAGE)
    if unknown:
        raise DataError(f"unknown methods {sorted(unknown)}; choose from: {'; '.join(METHOD_STAGE)} (quote names "
                        f"with spaces, e.g. --methods 'CoT SFT' 'TriMPI w/ PoRo-GRPO')")
    overrides = {**cfg.overrides, **({"model": cfg.model} if cfg.model else {})}
    recipe = as_recipe(cfg.recipe, **overrides)
    require_backend(recipe.backend, recipe.device)  # e.g. unsloth without a CUDA GPU: before any folder is made
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder for the comparison")
    out.mkdir(parents=True, exist_ok=True)
    with lock(out, "a pipeline run"):
        open_pipeline(out, pipeline_settings(cfg, recipe))
        return _run(cfg, task, recipe, overrides, out)


def _run(cfg: PipelineConfig, task, recipe, overrides: dict, out: Path) -> dict:
    """The comparison itself, into a checked and locked `out`: every method's stages, evaluations and the report."""
    results_path = out / "results.json"
    results = read_json(results_path, f"Delete {results_path}: a rerun re-scores every method from its cached "
                                      f"stages.") if results_path.exists() else {}
    results.update(config=config_record(cfg), recipe=recipe.to_dict(), paper=task.paper_table())
    if task.name != "clevr":
        results["dataset"] = task.name
    results.setdefault("methods", {})
    results.setdefault("efficiency", {})
    t0 = time.time()
    jobs = [(row, m) for row in task.rows(cfg) for m in cfg.methods]
    for row in task.rows(cfg):
        data_dir = out / row.label / "data"
        if not (data_dir / "summary.json").exists():
            t = time.time()
            task.build_data(cfg, row, data_dir, recipe)
            results.setdefault("data_seconds", {})[row.label] = round(time.time() - t, 1)
            write_json(results_path, results)
    todo = [(row, m) for row, m in jobs if f"{row.label}/{m}" not in results["methods"]]  # the rest: earlier runs

    def keep(row, method, found: dict) -> None:
        for k, v in found.items():
            if k == "result":
                results["methods"][f"{row.label}/{method}"] = v
            elif k == "efficiency":
                results["efficiency"].setdefault(row.efficiency_key, v)
            else:
                results.setdefault(k, v)
        write_json(results_path, results)  # saved after every method, atomically: resumable

    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="pipeline")
    if cfg.jobs > 1 and len(todo) > 1:
        _run_parallel(cfg, overrides, out, todo, keep, bar, results)
    else:
        for row, method in todo:
            keep(row, method, _method(cfg, task, overrides, out, row, method, "context" not in results,
                                      row.efficiency_key not in results["efficiency"]))
            bar.update()
    bar.close()
    order = [f"{row.label}/{m}" for row, m in jobs]  # the table's order, whichever process finished first
    results["methods"] = {k: results["methods"][k] for k in sorted(results["methods"], key=lambda k: (
        order.index(k) if k in order else len(order)))}
    results["seconds_this_run"] = round(time.time() - t0, 1)
    # every method's own time plus the data builds: the wall time of the whole comparison, across resumed runs
    results["seconds_all_runs"] = round(sum(r.get("seconds", 0) for r in results["methods"].values())
                                        + sum(results.get("data_seconds", {}).values()), 1)
    write_json(results_path, results)
    results["report"] = str(task.report(out, results))
    return results


def _method(cfg: PipelineConfig, task, overrides: dict, out: Path, row, method: str, context: bool,
            efficiency: bool, done: frozenset = frozenset()) -> dict:
    """Train (or reuse) one method's stages and evaluate it: {"result": its results entry} plus, when asked, the
    run's context check and the row's efficiency (measured on the base model)."""
    t_method = time.time()
    root, data_dir = out / row.label, out / row.label / "data"
    stage = METHOD_STAGE[method]
    stage_dir = run_stage(stage, root, data_dir, cfg, overrides, done) if stage else None
    model, processor = load_for_eval(cfg, stage_dir, overrides)
    found = {}
    if context:
        check = task.context_check(model, processor, data_dir)
        if check is not None:
            found["context"] = check
    res = task.evaluate(method, model, processor, data_dir, cfg)
    res.update(**dict(row.fields), method=method, stage_dir=str(stage_dir) if stage_dir else None)
    if stage_dir is not None:
        s = read_json(stage_dir / "summary.json")
        res["train"] = {"steps": s["steps"], "seconds": s["seconds"]}
        if (stage_dir / "completions").is_dir():  # an RL stage: what its groups saw, step by step
            res["rollouts"] = rollout_steps(stage_dir)
    if efficiency and method == "In-Context":
        found["efficiency"] = task.efficiency(model, processor, data_dir)
    res["seconds"] = round(time.time() - t_method, 1)  # its stages still to train + every evaluation
    found["result"] = res
    return found


def method_steps(method: str) -> list[str]:
    """The steps a method trains, first to last (In-Context: none)."""
    return method_steps_of_step(METHOD_STAGE[method])


def method_steps_of_step(name: str | None) -> list[str]:
    """Step `name` and the steps it starts from, first to last."""
    out = []
    while name:
        out.insert(0, name)
        name = STEPS[name][1]
    return out


def parallel_plan(methods: list[str]) -> list[tuple[str, str, str | None]]:
    """The tasks a parallel run schedules: ("train", step, the step it needs) for every step any method trains
    (once, though several methods share it) and ("evaluate", method, its last step), longest chains first. A task
    starts once what it needs is done, so CoT SFT + GRPO trains while VM-CPT still runs."""
    below: dict[str, int] = {}
    for m in methods:
        chain = method_steps(m)
        for i, st in enumerate(chain):
            below[st] = max(below.get(st, 0), len(chain) - i)
    train = sorted(below, key=lambda st: -below[st])
    return ([("train", st, STEPS[st][1]) for st in train]
            + [("evaluate", m, (method_steps(m) or [None])[-1]) for m in methods])


def _task(cfg: PipelineConfig, overrides: dict, out: str, label: str, kind: str, name: str, context: bool,
          efficiency: bool, threads: int) -> dict:
    """One task of a parallel run, in a worker process with `threads` torch threads: a step trained (its parents
    are done and taken as they are) or a method evaluated (its stages are done)."""
    import torch

    from .progress import library_bars_off
    from .tasks import get_task

    torch.set_num_threads(threads)
    task = get_task(cfg.dataset)
    row = next(r for r in task.rows(cfg) if r.label == label)
    root = Path(out) / label
    if kind == "train":  # its parents are done: the scheduler started it after them
        parents = frozenset(method_steps_of_step(STEPS[name][1]))
        with library_bars_off():
            run_stage(name, root, root / "data", cfg, overrides, parents)
        return {}
    done = frozenset(method_steps(name))  # an evaluation starts once its method's last step is trained
    return _method(cfg, task, overrides, Path(out), row, name, context, efficiency, done)


def _run_parallel(cfg, overrides, out, todo, keep, bar, results) -> None:
    """`cfg.jobs` worker processes, the threads split between them, fed from `parallel_plan`: each task as soon as
    the step it needs is done; results kept as each evaluation finishes (an interrupted run keeps those)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    rows: dict = {}
    for row, m in todo:
        rows.setdefault(row.label, (row, []))[1].append(m)
    pending = [(row, *t) for row, ms in rows.values() for t in parallel_plan(ms)]
    done: set = set()  # (label, step) trained
    threads = max(1, torch.get_num_threads() // cfg.jobs)
    context = "context" not in results
    with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
        running: dict = {}
        while pending or running:
            for item in [t for t in pending if t[3] is None or (t[0].label, t[3]) in done]:
                if len(running) >= cfg.jobs:
                    break
                row, kind, name, _ = item
                pending.remove(item)
                eff = kind == "evaluate" and row.efficiency_key not in results["efficiency"]
                running[ex.submit(_task, cfg, overrides, str(out), row.label, kind, name,
                                  context and kind == "evaluate", eff, threads)] = item
                context = context and kind != "evaluate"
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                row, kind, name, _ = running.pop(f)
                found = f.result()
                if kind == "train":
                    done.add((row.label, name))
                else:
                    keep(row, name, found)
                    bar.update()


def table(results: dict) -> str:
    """The results as plain text, as the task prints them (ClevrPolicy: methods down, N across)."""
    from .tasks import task_of_results

    return task_of_results(results).table(results)


def rollout_steps(stage_dir: Path) -> list[dict]:
    """Per RL step, from the stage's rollout log: the share of groups with zero reward variance (no signal) and of
    solved ones (every completion right), the share PolicyRollout rescued (no correct no-policy completion, a
    correct policy-aware one), and each half's mean reward and accuracy."""
    from .rollout_log import load_rollouts, step_stats

    cols = ("step", "groups", "frac_zero_std", "frac_solved", "frac_rescued", "reward_no_policy",
            "reward_policy_aware", "acc_no_policy", "acc_policy_aware")
    stats = step_stats(load_rollouts(stage_dir))
    return [{c: (None if v != v else round(float(v), 4)) for c, v in zip(cols, r)}  # NaN -> None (no such half)
            for r in stats[list(cols)].itertuples(index=False)]
