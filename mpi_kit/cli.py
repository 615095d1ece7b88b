"""The `mpi-kit` command line: the same functions the notebooks call, one subcommand per job.

    mpi-kit data --out runs/data --num-policies 10 --num-scenes 2000 --depth 6
    mpi-kit gta-data --out runs/gta [--gta-root gta_dataset]
    mpi-kit demo --out runs/demo
    mpi-kit cpt --recipe tiny --data runs/data --out runs/vm_cpt [--max-steps N] [--init DIR]
    mpi-kit sft --recipe tiny --data runs/data --out runs/sft_cot --mode cot [--init runs/vm_cpt]
    mpi-kit rl --recipe tiny --data runs/data --out runs/poro --algo grpo --policy-rollout --init runs/sft_cot
    mpi-kit rl --recipe tiny --data runs/gta --out runs/gta_poro --policy-rollout [--reward auto|clevr|gta]
    mpi-kit distill --recipe tiny --data runs/data --out runs/distill [--source teacher|cot] [--init runs/vm_cpt]
    mpi-kit custom-data --rows rows.jsonl --policy policy.txt --out runs/mine   (your own policy)
    mpi-kit evaluate --data runs/mine --model runs/distill [--setting no_policy|in_context|override]
    mpi-kit pipeline --recipe tiny --dataset gta --out runs/gta_pipeline
    mpi-kit inspect runs/poro
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path


def _add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per dataclass field, with the field's help text and default."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, dict):  # recipe overrides: --set KEY=VALUE (`_overrides`)
            continue
        help_ = f.metadata.get("help", "") + f" (default: {default})"
        if isinstance(default, tuple):
            parser.add_argument(flag, nargs="+", default=list(default), help=help_,
                                type=int if default and isinstance(default[0], int) else str)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            parser.add_argument(flag, default=default, help=help_, type=_scalar_type(f, default))


def _scalar_type(f, default):
    """The argparse type of a field: its default's type, or the first of int/float named in `X | None`."""
    if default is not None:
        return type(default)
    ann = str(f.type)
    return int if ann.startswith("int") else float if ann.startswith("float") else str


def _dataclass_from_args(cls, args: argparse.Namespace):
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for k, v in kw.items():
        if isinstance(v, list):
            kw[k] = tuple(v)
    return cls(**kw)


def cmd_data(args) -> int:
    """`mpi-kit <task's data command>`: build that task's datasets from its settings' flags."""
    task = args.task
    summary = task.build(_dataclass_from_args(task.data_settings(), args))
    print(json.dumps({k: summary[k] for k in task.summary_keys if k in summary}, indent=1))
    print(f"wrote {args.out} ({task.data_files} beside the datasets)")
    return 0


def cmd_demo(args) -> int:
    """The kit's main job on the tiny recipe: TriMPI and the key baselines at N = 4, the table and a report."""
    from .pipeline import demo_config, run_pipeline, table
    from .recipes import TINY_MODEL_DIR

    if not (TINY_MODEL_DIR / "config.json").exists():  # a checkout without the shipped model: data only
        from .tasks import get_task

        print(f"no tiny model at {TINY_MODEL_DIR}; building data and a data report only "
              f"(train it with `python scripts/pretrain_tiny.py`)", file=sys.stderr)
        clevr = get_task("clevr")
        clevr.build(clevr.data_settings()(out=str(Path(args.out) / "data"), num_policies=4, num_scenes=200, depth=4,
                                          seed=args.seed))
        print(f"report: {clevr.data_report(Path(args.out) / 'data')}")
        return 0
    t0 = time.time()
    results = run_pipeline(demo_config(args.out, args.seed, args.eval_limit, args.jobs))
    print(table(results))
    import torch

    print(f"demo: {time.time() - t0:.0f} s on {torch.get_num_threads()} torch threads (this run; a finished stage or "
          f"evaluation in {args.out} is reused, not redone)")
    print(f"report: {results['report']}")
    return 0


def cmd_pipeline(args) -> int:
    from .pipeline import PipelineConfig, run_pipeline, table

    cfg = _dataclass_from_args(PipelineConfig, args)
    cfg.overrides = _overrides(args)
    results = run_pipeline(cfg)
    print(table(results))
    print(f"results: {Path(args.out) / 'results.json'}\nreport: {results['report']}")
    return 0


def _stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="tiny", help="recipe name, hub id or local model folder (default: tiny)")
    p.add_argument("--data", required=True, help="data folder written by `mpi-kit data`")
    p.add_argument("--out", required=True, help="run folder: checkpoints, final model, summary.json; rerun to resume")
    p.add_argument("--init", default=None, help="start from a previous stage's folder (e.g. VM-CPT before SFT)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    p.add_argument("--save-steps", type=int, default=None, help="checkpoint every N steps (default: max_steps/4)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    _set_arg(p)
    _backend_arg(p)


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides, e.g. vm_cpt.learning_rate=1e-4 lora.r=8 (values parsed as JSON)")


def _backend_arg(p: argparse.ArgumentParser) -> None:
    from .recipes import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="how to load the model (default: the recipe's, 'hf'): 'hf' = transformers + peft, CPU or GPU; "
                        "'unsloth' = unsloth's FastVisionModel, CUDA GPU only (same as --set backend=unsloth)")


def _overrides(args) -> dict:
    """Recipe overrides from --set KEY=VALUE (values parsed as JSON) and --backend."""
    from .recipes import RecipeError

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if args.backend is not None:
        overrides["backend"] = args.backend
    return overrides


def _stage_kwargs(args) -> dict:
    return dict(init=args.init, max_steps=args.max_steps, save_steps=args.save_steps, limit=args.limit,
                progress=True, **_overrides(args))


def _check_backend(args, kw: dict) -> None:
    """Fail fast, before any data or output folder is touched, when the stage's backend cannot run here (unsloth
    without a CUDA GPU). With one, this imports unsloth before the stage module imports trl/peft, as unsloth needs."""
    from .models import require_backend
    from .recipes import as_recipe

    recipe = as_recipe(args.recipe, **{k: v for k, v in kw.items() if k not in STAGE_KEYWORDS})
    require_backend(recipe.backend, recipe.device)


STAGE_KEYWORDS = ("init", "max_steps", "save_steps", "limit", "progress")


def _run_stage(args, run) -> int:
    from .folders import StateError
    from .models import BackendUnavailableError
    from .recipes import RecipeError
    from .training import StageError

    try:
        summary = run()
    except (RecipeError, StageError, StateError, BackendUnavailableError) as e:
        print(f"mpi-kit {args.command}: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch: one report, from the main process
        return 0
    print(json.dumps({k: summary[k] for k in ("stage", "steps", "final_loss", "seconds", "steps_per_second",
                                              "peak_memory_gib")}, indent=1))
    print(f"wrote {args.out} (model, processor, summary.json)")
    return 0


def cmd_cpt(args) -> int:
    def run():
        kw = _stage_kwargs(args)
        _check_backend(args, kw)
        from .cpt import run_cpt

        return run_cpt(args.recipe, args.data, args.out, **kw)

    return _run_stage(args, run)


def cmd_sft(args) -> int:
    def run():
        kw = _stage_kwargs(args)
        _check_backend(args, kw)
        from .sft import run_sft

        return run_sft(args.recipe, args.data, args.out, args.mode, **kw)

    return _run_stage(args, run)


def cmd_rl(args) -> int:
    def run():
        kw = _stage_kwargs(args)
        _check_backend(args, kw)
        from .rl import run_rl  # after the check: rl imports trl, which unsloth must patch first

        if args.num_generations is not None:
            kw["num_generations"] = args.num_generations
        kw.update(_reward_kwargs(args))
        return run_rl(args.recipe, args.data, args.out, args.algo, args.policy_rollout, **kw)

    return _run_stage(args, run)


def cmd_distill(args) -> int:
    def run():
        kw = _stage_kwargs(args)
        _check_backend(args, kw)
        from .distill import run_distill

        return run_distill(args.recipe, args.data, args.out, source=args.source, **kw)

    return _run_stage(args, run)


def cmd_evaluate(args) -> int:
    """Held-out accuracy of a model (a stage's folder, or the recipe's base model) on a data folder's eval split,
    scored by the task that built it, as one sentence with its 95% interval."""
    from .folders import write_json
    from .progress import library_bars_off
    from .tasks import task_of
    from .training import load_stage_model, stage_recipe

    task = task_of(args.data)  # a folder that is not the kit's data: a DataError before any model loads
    recipe = stage_recipe(args.recipe, args.model)
    with library_bars_off():
        model, processor = load_stage_model(recipe, args.model, trainable=False)
    model.eval()
    rows = task.evaluate_accuracy(model, processor, args.data, args.setting, args.model or "base", args.limit,
                                  args.max_new_tokens)
    s = task.summarize(rows)[0]
    lo, hi = s["interval_95"]
    print(f"{args.model or recipe.name} on {args.data} ({args.setting.replace('_', ' ')}): "
          f"{s['accuracy']:.1f}% right (95% interval {lo:.1f}-{hi:.1f}%, n = {s['n']})")
    if args.out:
        write_json(Path(args.out), {"summary": s, "rows": rows})
        print(f"wrote {args.out} (every row's completion and score)")
    return 0


def _reward_kwargs(args) -> dict:
    """--reward: the rewards of the task named (clevr: format + answer accuracy; gta: format + tool-call score);
    auto: those of the task that built --data (`rl_trainer` asks `mpi_kit.tasks.task_of`)."""
    return {} if args.reward == "auto" else {"task": args.reward}


def cmd_inspect(args) -> int:
    """Per-step table of an RL run's rollout log (re-recording the shipped demo run first with --record)."""
    from .recorded_run import record_demo_run
    from .rollout_log import summary_table

    if args.record:
        record_demo_run(args.run_dir)
    print(summary_table(args.run_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .tasks import TASKS

    parser = argparse.ArgumentParser(prog="mpi-kit", description="Multimodal Policy Internalization kit")
    sub = parser.add_subparsers(dest="command", required=True)
    for task in TASKS.values():  # each task's data command (`Task.data_command`), flags from its settings
        if task.data_command:
            p = sub.add_parser(task.data_command, help=task.data_help)
            _add_dataclass_args(p, task.data_settings())
            p.set_defaults(func=cmd_data, task=task)
    p = sub.add_parser("demo", help="run the main job on the tiny recipe and write a report")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--eval-limit", type=int, default=200, help="held-out questions per method (default: 200, "
                   "enough for a 95%% interval of about +-7 points; smaller is faster and noisier)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="methods run at once, each in its own process (default: 2 on a machine with 2 or more "
                        "cores, else 1), the torch threads split between them")
    p.set_defaults(func=cmd_demo)
    from .pipeline import PipelineConfig

    p = sub.add_parser("pipeline", help="the paper's methods x N x every evaluation -> results.json + report.html")
    _add_dataclass_args(p, PipelineConfig)
    _set_arg(p)
    _backend_arg(p)
    p.set_defaults(func=cmd_pipeline)
    p = sub.add_parser("cpt", help="TriMPI stage 1: VM-CPT on the vmcpt data (runs under `accelerate launch` too)")
    _stage_args(p)
    p.set_defaults(func=cmd_cpt)
    p = sub.add_parser("sft", help="CoT SFT (stage 2) or the Direct SFT baseline (runs under `accelerate launch` too)")
    _stage_args(p)
    p.add_argument("--mode", choices=["cot", "direct"], default="cot", help="cot: CoT + answer; direct: answer only")
    p.set_defaults(func=cmd_sft)
    p = sub.add_parser("rl", help="TriMPI stage 3: GRPO or DAPO, optionally with PolicyRollout (accelerate launch "
                                  "too)")
    _stage_args(p)
    p.add_argument("--algo", choices=["grpo", "dapo"], default="grpo", help="grpo (KL 0.01) or dapo (no KL, "
                   "token-level loss, dynamic sampling)")
    p.add_argument("--policy-rollout", action="store_true", help="PolicyRollout: G no-policy + G policy-aware "
                   "rollouts pooled per prompt, all trained on the no-policy prompt")
    p.add_argument("--num-generations", type=int, default=None, help="G (default: the recipe's); PoRo samples 2G")
    p.add_argument("--reward", choices=["auto", *TASKS], default="auto", help="whose rewards (the task "
                   "folder's rewards.py: format + accuracy); auto: the task that built --data (default)")
    p.set_defaults(func=cmd_rl)
    p = sub.add_parser("distill", help="policy distillation (beside TriMPI): the model with its policy in context "
                                       "teaches itself without it, on the rl data; no labels needed")
    _stage_args(p)
    p.add_argument("--source", choices=["teacher", "cot"], default="teacher", help="teacher: completions the "
                   "model writes with its policy in context (default); cot: the data's CoT rows")
    p.set_defaults(func=cmd_distill)
    p = sub.add_parser("evaluate", help="held-out accuracy of a model on a data folder, scored by its task")
    p.add_argument("--data", required=True, help="data folder (any task's: `mpi-kit data`, `custom-data`, ...)")
    p.add_argument("--model", default=None, help="a stage's folder (default: the recipe's base model)")
    p.add_argument("--recipe", default="tiny", help="recipe name, hub id or local model folder (default: tiny)")
    p.add_argument("--setting", choices=["no_policy", "in_context", "override"], default="no_policy",
                   help="no_policy: the policy internalized (default); in_context: it in the prompt; override: a new "
                        "policy in the prompt")
    p.add_argument("--limit", type=int, default=None, help="evaluate N rows spread over the split (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation budget per answer (default: 256)")
    p.add_argument("--out", default=None, help="also write every row's completion and score to this JSON file")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("inspect", help="per-step summary of an RL run's rollout log (completions/*.parquet)")
    p.add_argument("run_dir", help="an RL run folder (or a packed one, e.g. assets/rollouts)")
    p.add_argument("--record", action="store_true", help="first re-record the shipped demo run into RUN_DIR "
                   "(data, short CoT SFT, a few PoRo-GRPO steps on the tiny recipe; minutes on a CPU)")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .folders import StateError
    from .models import BackendUnavailableError
    from .recipes import RecipeError
    from .tasks import TASKS
    from .training import StageError

    args = build_parser().parse_args(argv)
    task_errors = tuple(e for t in TASKS.values() for e in t.errors)
    try:
        return args.func(args)
    except (DataError, *task_errors, FileNotFoundError, BackendUnavailableError, RecipeError, StageError,
            StateError) as e:
        print(f"mpi-kit {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        _end_distributed()


def _end_distributed() -> None:
    """Under `accelerate launch`, tear the process group down before exit: a gloo group left to the interpreter's
    shutdown can abort one rank ("terminate called without an active exception") after the work is saved."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
