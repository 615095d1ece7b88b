"""What every training stage shares: loading the starting model, trainer arguments from a recipe, resuming, and
the run folder (final model + processor, `summary.json`).

A stage run is a folder: `checkpoint-N/` subfolders while it trains (the last two are kept), then the final model
and processor at the top, loadable with `load_model(out)` (a LoRA run saves its adapter; see `load_stage_model`).
Rerunning into the same folder resumes from the last checkpoint and ends where an uninterrupted run ends: the
optimizer, scheduler, RNG states and the data order all come back from the checkpoint.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .data import DataError, message_text, require_columns, writable_dir
from .folders import StateError, lock, read_json, write_json
from .models import (VISION_RE, as_recipe, count_parameters, load_model, peak_memory, require_backend, resolve_device,
                     resolve_precision,
                     unsloth_mode)
from .recipes import Recipe, StageSettings

RECIPE_FILE = "mpi_recipe.json"


class StageError(ValueError):
    """A stage cannot run on what it was given (data, starting point, arguments); the message says what to fix."""


# ------------------------------------------------------------------------------------------------ data checks

def _n_images(messages: list[dict]) -> int:
    return sum(p["type"] == "image" for m in messages for p in m["content"])


def check_rows(ds, stage: str, columns=("prompt", "completion", "images"), completions: bool = True) -> None:
    """Columns present, dataset non-empty, and every row's image placeholders match its images (else the model
    fails later with 'image features and image tokens do not match'); every completion non-empty unless the stage
    writes its own (`completions` False)."""
    require_columns(ds, list(columns), stage)
    for i, (prompt, completion, images) in enumerate(zip(ds["prompt"], ds["completion"], ds["images"])):
        n = _n_images(prompt) + _n_images(completion)
        if n != len(images):
            raise DataError(f"{stage}: row {i} has {n} image placeholder(s) in its messages but {len(images)} "
                            f"image(s) in its `images` column; they must match one to one, in order")
        if completions and not message_text(completion).strip():
            raise DataError(f"{stage}: row {i} has an empty completion; there is nothing to learn from it")


# ---------------------------------------------------------------------------------------------- model loading

def is_adapter_dir(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "adapter_config.json").exists()


def stage_recipe(recipe: "Recipe | str", init: str | None = None, **overrides) -> Recipe:
    """The recipe a stage runs with: `init` (a previous stage's folder) replaces the model to start from, unless
    it is a LoRA adapter folder, which keeps the recipe's base model and continues that adapter."""
    recipe = as_recipe(recipe, **overrides)
    require_backend(recipe.backend, recipe.device)  # unsloth without a GPU: fail before any data or folder is touched
    if init is None:
        return recipe
    p = Path(init)
    if not p.is_dir():
        raise StageError(f"--init {init}: no such folder; pass the output folder of a previous stage")
    if is_adapter_dir(p):
        _check_init_complete(p)
        saved = p / RECIPE_FILE
        base = read_json(saved, f"Rerun the stage that wrote {p}.").get("model", recipe.model) if saved.exists() \
            else recipe.model
        return as_recipe(recipe, model=base)
    if not (p / "config.json").exists():
        raise StageError(f"--init {init}: holds neither a model (config.json) nor a LoRA adapter "
                         f"(adapter_config.json); did that stage finish?")
    _check_init_complete(p)
    return as_recipe(recipe, model=str(p))


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def _check_init_complete(p: Path) -> None:
    """A stage folder to start from must hold its final weights, and, if a stage wrote it, a finished summary."""
    if not any((p / w).exists() for w in WEIGHTS):
        raise StageError(f"--init {p}: has a config but no weights ({' / '.join(WEIGHTS[:3])}); the stage that "
                         f"wrote it did not finish saving. Rerun that stage into {p} to finish it.")
    summary = p / "summary.json"
    stage_dir = summary.exists() or any(p.glob("checkpoint-*"))
    done = summary.exists() and read_json(summary, f"Rerun that stage into {p} to rewrite it.").get("completed", True)
    if stage_dir and not done:
        raise StageError(f"--init {p}: that stage has not finished (no completed summary.json). Rerun it into {p} "
                         f"to resume and finish it, then start from it.")


def load_stage_model(recipe: Recipe, init: str | None = None, trainable: bool = True):
    """(model, processor) to train: the recipe's model (with its LoRA if enabled), or a previous stage's output.
    A LoRA adapter folder is loaded onto the recipe's base and stays trainable (one adapter across stages).
    The recipe's `backend` loads it ('hf', or 'unsloth' on a CUDA GPU, then switched to training or inference)."""
    device = resolve_device(recipe.device)
    if device.startswith("cuda") and "LOCAL_RANK" in os.environ:  # one GPU per process under accelerate launch
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if init is not None and is_adapter_dir(init):
        from peft import PeftModel
        from transformers import AutoProcessor

        from .models import apply_pixel_caps

        model, _ = load_model(recipe, lora=False, device=device)  # backend: the recipe's
        if recipe.quantization == "nf4" and recipe.backend == "hf":  # unsloth prepares its 4-bit model itself
            from peft import prepare_model_for_kbit_training
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
        model = PeftModel.from_pretrained(model, init, is_trainable=trainable)
        model.mpi_recipe = recipe
        processor = apply_pixel_caps(AutoProcessor.from_pretrained(init), recipe)
        return unsloth_mode(model, trainable, recipe.backend), processor
    model, processor = load_model(recipe, device=device)
    return unsloth_mode(model, trainable, recipe.backend), processor


def tiny_or_random(recipe: "Recipe | str", data_dir, out="runs/tiny-random") -> Recipe:
    """The recipe, or, when it is `tiny` and the shipped model (assets/tiny-vlm) is missing, the same recipe on a
    random-weight tiny model (tokenizer trained on `data_dir`'s texts) so that notebooks still run end to end.
    A random model learns the stages' mechanics, not perception: its answers mean nothing until the real one lands."""
    recipe = as_recipe(recipe)
    if recipe.name != "tiny" or Path(recipe.model).exists():
        return recipe
    from .data import load_kit_data
    from .tiny import build_tiny, save_tiny

    if not (Path(out) / "config.json").exists():
        texts = []
        for kind in ("vmcpt", "cot", "qa"):
            if (Path(data_dir) / kind).exists():
                for r in load_kit_data(data_dir, kind)["train"]:
                    texts += [p["text"] for m in r["prompt"] + r["completion"] for p in m["content"] if p["text"]]
        save_tiny(*build_tiny(texts), out)
    print(f"note: {recipe.model} is missing; using a random-weight tiny model at {out}")
    return as_recipe(recipe, model=str(Path(out).resolve()))


def freeze_vision(model) -> int:
    """Freeze the vision tower (ViT + merger): the stages train the language model. Returns parameters frozen."""
    import re

    vision = re.compile(VISION_RE + r"\.")
    n = 0
    for name, p in model.named_parameters():
        if vision.match(name.removeprefix("base_model.model.")) and p.requires_grad:
            p.requires_grad_(False)
            n += p.numel()
    return n


# ---------------------------------------------------------------------------------------------- trainer args

def trainer_kwargs(recipe: Recipe, stage: StageSettings, out, max_steps: int | None = None,
                   save_steps: int | None = None, progress: bool = False) -> dict:
    """TrainingArguments / SFTConfig keywords for a stage: the recipe's hyperparameters, precision matching the
    recipe (fp32 on a CPU: bf16 there is far slower on most CPUs), per-step loss logging, periodic checkpoints,
    fixed seeds."""
    kw = stage.trl_kwargs()
    if recipe.memory_budget_gib:  # the memory planner sets micro-batch x accumulation (same effective batch)
        from .memory import apply_plan

        from .stages import STAGES

        section = next(s.section for s in STAGES.values() if getattr(recipe, s.section) is stage)
        kw = apply_plan(recipe, section, kw)
    kw["warmup_steps"] = kw.pop("warmup_ratio")  # transformers 5: a float < 1 is a ratio of the total steps
    if max_steps is not None:
        if int(max_steps) < 1:
            raise StageError(f"max_steps must be >= 1, got {max_steps} (leave it unset for the recipe's "
                             f"{kw['max_steps']} steps)")
        kw["max_steps"] = int(max_steps)
    steps = kw["max_steps"]
    if save_steps is None:
        save_steps = max(1, steps // 4) if steps > 0 else 200
    precision = resolve_precision(recipe.precision, recipe.device)  # 'auto': bf16 on capability >= 8, else fp16
    return dict(kw, output_dir=str(out), bf16=precision == "bf16", fp16=precision == "fp16",
                gradient_checkpointing=recipe.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False} if recipe.gradient_checkpointing else None,
                use_cpu=resolve_device(recipe.device) == "cpu", seed=recipe.seed, data_seed=recipe.seed,
                logging_steps=1, save_strategy="steps", save_steps=save_steps, save_total_limit=2,
                report_to="none", ddp_find_unused_parameters=False, disable_tqdm=not progress,
                dataloader_num_workers=0, remove_unused_columns=False)


# ------------------------------------------------------------------------------------------------- running

class ResumeFix:
    """Trainer mixin. transformers 5.17 resumes a full model with a raw `load_state_dict(strict=False)`, but Qwen-VL
    checkpoints are saved in the original key layout (`visual.*`, `model.layers.*`): no key matches, and training
    silently goes on from the weights it started with (huggingface/transformers#43701). Reload the checkpoint
    through `from_pretrained`, which maps the keys, and copy it in strictly. Adapters (peft) resume as before."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        ckpt = Path(resume_from_checkpoint)
        full = (ckpt / "model.safetensors").exists() or (ckpt / "model.safetensors.index.json").exists()
        if hasattr(model, "peft_config") or not full:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        loaded = type(model).from_pretrained(str(ckpt), dtype=dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
        del loaded


def safetensors_problem(f: Path) -> str | None:
    """Why a .safetensors file is not whole (its header must parse and its tensors must end where the file ends)."""
    import struct

    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{f.name} is truncated"
            n = struct.unpack("<Q", head)[0]
            if n > f.stat().st_size:
                return f"{f.name} is truncated"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, RecursionError):
        return f"{f.name} has an unreadable header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    if f.stat().st_size < 8 + n + max(ends, default=0):
        return f"{f.name} is truncated"
    return None


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (a write cut short by a kill or a full disk), or None if it can: every
    file it holds must be whole (JSON parses, torch's zip files have their directory, safetensors their tensors)."""
    import zipfile

    state = ckpt / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return "trainer_state.json is missing or unreadable"
    if not any((ckpt / w).exists() and (ckpt / w).stat().st_size > 0 for w in WEIGHTS):
        return "no weights"
    for f in sorted(ckpt.iterdir()):
        if f.suffix == ".safetensors":
            problem = safetensors_problem(f)
        elif f.suffix in (".pt", ".pth", ".bin"):  # torch.save writes a zip; a cut one has no directory
            problem = None if zipfile.is_zipfile(f) else f"{f.name} is truncated"
        elif f.suffix == ".json":
            try:
                json.loads(f.read_text())
                problem = None
            except (OSError, ValueError, RecursionError):
                problem = f"{f.name} is unreadable"
        else:
            problem = None
        if problem:
            return problem
    return None


def last_checkpoint(out) -> str | None:
    """The newest complete `checkpoint-N` in `out`; incomplete ones are skipped with a warning."""
    import re
    import warnings

    out = Path(out)
    if not out.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in out.iterdir()
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, ckpt in reversed(found):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        warnings.warn(f"skipping incomplete checkpoint {ckpt} ({problem}); resuming from an earlier one",
                      stacklevel=2)
    return None


RUN_FILE = "mpi_run.json"  # what a run folder was started with: a rerun with other settings is refused
NOT_SETTINGS = ("callbacks", "progress", "save_steps", "resume")  # change how a run is watched, not its result


def _jsonable(v):
    if isinstance(v, Recipe):
        return v.to_dict()
    if callable(v):
        return getattr(v, "__name__", type(v).__name__)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if hasattr(v, "_fingerprint"):  # a datasets.Dataset passed directly
        return f"dataset:{v._fingerprint}"
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def run_settings(stage: str, recipe, data_dir, **kw) -> dict:
    """The settings that decide a stage's result: its name, recipe (+ overrides), data folder and arguments."""
    if kw.get("max_steps") is not None and int(kw["max_steps"]) < 1:
        raise StageError(f"max_steps must be >= 1, got {kw['max_steps']} (leave it unset for the recipe's steps)")
    settings = {"stage": stage, "recipe": _jsonable(recipe),
                "data": str(Path(data_dir).resolve()) if data_dir else None}
    for k, v in sorted(kw.items()):
        if k not in NOT_SETTINGS:
            settings[k] = str(Path(v).resolve()) if k == "init" and v else _jsonable(v)
    return settings


def open_run(out, settings: dict, resume: bool = True) -> dict | None:
    """Check a stage's run folder before any model loads. Returns the saved summary when `out` already holds this
    stage finished with the same settings (it is reused as it is, nothing retrains); None when there is nothing
    yet, or an unfinished run of the same settings to resume. Another run's folder is refused, naming the
    difference and the way out; so is an `out` that is a file or cannot be written."""
    out = writable_dir(out, StageError, "pass a folder for the run (it is created if missing)")
    saved_file, summary_file = out / RUN_FILE, out / "summary.json"
    started = saved_file.exists() or summary_file.exists() or any(out.glob("checkpoint-*"))
    if not started or not resume:
        write_json(saved_file, settings)
        return None
    if not saved_file.exists():
        raise StageError(f"--out {out} already holds a run whose settings were not recorded (made by an older kit, or "
                         f"by hand); use a new --out, or delete {out} to start over")
    saved = read_json(saved_file, f"Use a new --out, or delete {out} to start that run over.")
    diff = [f"{k}: {json.dumps(saved.get(k))} there, {json.dumps(settings.get(k))} asked"
            for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
    if diff:
        raise StageError(f"--out {out} holds a different run ({'; '.join(diff)}). Use a new --out for these settings, "
                         f"or delete {out} to replace that run")
    if summary_file.exists():
        summary = read_json(summary_file, f"Delete {summary_file}: the rerun then finishes from the last "
                                          f"checkpoint.")
        if summary.get("completed"):
            return {**summary, "reused": True}
    return None


def finish_from(trainer, ckpt) -> None:
    """Take a finished run's last checkpoint as its end (weights and trainer state) without training a step more:
    resuming there would run past `max_steps`."""
    from transformers import TrainerState

    trainer._load_from_checkpoint(ckpt)
    trainer.state = TrainerState.load_from_json(str(Path(ckpt) / "trainer_state.json"))


def run_stage_in(out, stage: str, settings: dict, make_trainer, resume: bool = True) -> dict:
    """A stage run into `out`, holding the folder's lock: reuse a finished run of the same settings, refuse another
    run's folder (`open_run`), else build the trainer (`make_trainer()` -> trainer, processor, info) and train."""
    out = writable_dir(out, StageError, "pass a folder for the run (it is created if missing)")
    with lock(out, f"a {stage} run"):
        done = open_run(out, settings, resume)
        if done is not None:
            return done  # finished before with these settings: reused as it is
        trainer, processor, info = make_trainer()
        return train_stage(trainer, stage, out, processor, info, resume=resume)


def _disk_full(e: BaseException, out: Path) -> bool:
    import errno
    import shutil

    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    text = str(e).lower()
    return ("write failed" in text or "no space" in text) and shutil.disk_usage(out).free < 64 * 2**20


def train_stage(trainer, stage: str, out, processor, info: dict | None = None, resume: bool = True) -> dict:
    """Train, save and summarise, saying so plainly when the disk fills (a rerun resumes from the last complete
    checkpoint)."""
    try:
        return _train_stage(trainer, stage, out, processor, info, resume)
    except (OSError, RuntimeError) as e:
        if _disk_full(e, Path(out)):
            raise StageError(f"the disk is full: writing {out} failed ({type(e).__name__}: {str(e)[:120]}). Free some "
                             f"space and rerun; the stage resumes from its last complete checkpoint") from e
        raise


def _train_stage(trainer, stage: str, out, processor, info: dict | None = None, resume: bool = True) -> dict:
    """Train (resuming from the folder's last checkpoint when there is one), save the final model + processor
    and write `summary.json`; returns the summary. `info["recipe"]`, the Recipe the trainer was built with, is
    written beside the weights (mpi_recipe.json) and named in the summary."""
    out = Path(out)
    info = dict(info or {})
    recipe = info.pop("recipe", None)
    ckpt = last_checkpoint(out) if resume else None
    t0 = time.time()
    step0 = 0
    if ckpt:
        step0 = json.loads((Path(ckpt) / "trainer_state.json").read_text())["global_step"]
    if ckpt and 0 < trainer.args.max_steps <= step0:
        finish_from(trainer, ckpt)  # it stopped after its last step, before the final save: nothing left to train
    else:
        trainer.train(resume_from_checkpoint=ckpt)
    seconds = time.time() - t0
    state = trainer.state
    if info.get("merge_lora"):  # a stage trained as LoRA alone: save full weights for the next stage
        trainer.model = trainer.model.merge_and_unload()
    model = trainer.model
    trainer.save_model(str(out))
    summary = {
        "stage": stage,
        "recipe": recipe.name if recipe is not None else None,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "completed": state.global_step >= state.max_steps,
        "resumed_from": ckpt,
        "loss": [{"step": h["step"], "loss": h["loss"]} for h in state.log_history if "loss" in h],
        "final_loss": next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None),
        # RL: the share of completion tokens whose update the clip stopped, per logged step (0 while ratios are 1)
        **({"clipped": [{"step": h["step"], "share": h["clip_ratio/region_mean"]} for h in state.log_history
                        if "clip_ratio/region_mean" in h]} if any("clip_ratio/region_mean" in h
                                                                   for h in state.log_history) else {}),
        # the mean logged loss over every step, resumed ones included (result.training_loss covers this call only)
        "train_loss": (sum(h["loss"] for h in state.log_history if "loss" in h) /
                       max(1, sum("loss" in h for h in state.log_history))) if state.global_step else None,
        "seconds": round(seconds, 2),
        "steps_per_second": round((state.global_step - step0) / seconds, 4) if seconds > 0 else None,
        "peak_memory_gib": round(peak_memory(), 3),
        "params": count_parameters(model),
        "world_size": trainer.args.world_size,
        **info,
    }
    if trainer.is_world_process_zero():
        if recipe is not None:
            recipe.to_json(out / RECIPE_FILE)
        if processor is not None:
            processor.save_pretrained(str(out))
        write_json(out / "summary.json", summary)
    return summary


def summary_text(summary: dict) -> str:
    """A finished stage's summary (what `train_stage` returns and writes to summary.json) in one sentence: steps,
    loss at the first and last logged step, speed, peak memory and how many of the parameters it trained."""
    steps = summary["steps"]
    text = f"{steps} step{'' if steps == 1 else 's'}"
    if summary.get("loss") and summary.get("final_loss") is not None:
        text += f", loss {summary['loss'][0]['loss']:.3g} → {summary['final_loss']:.3g}"
    if summary.get("steps_per_second"):
        text += f", {summary['steps_per_second']:.2f} steps/s"
    if summary.get("peak_memory_gib") is not None:
        text += f", peak memory {summary['peak_memory_gib']:.2f} GiB"
    p = summary.get("params") or {}
    if p:
        text += f"; trained {p['trainable']:,} of {p['total']:,} parameters ({p['trainable_pct']:.1f}%)"
    return text


def loss_figure(summaries: dict[str, dict], title: str = "training loss"):
    """A plotly figure of one or more stages' loss curves (name -> summary), steps ticked at whole numbers."""
    import plotly.graph_objects as go

    from .charts import step_axis, title_layout

    fig = go.Figure()
    for name, s in summaries.items():
        fig.add_trace(go.Scatter(x=[p["step"] for p in s["loss"]], y=[p["loss"] for p in s["loss"]],
                                 mode="lines+markers", name=name))
    steps = [p["step"] for s in summaries.values() for p in s["loss"]]
    fig.update_layout(**title_layout(title), xaxis=dict(title="optimizer step", **step_axis(steps)),
                      yaxis_title="loss", height=350)
    fig.update_layout(margin=dict(l=40, r=20, b=40))
    return fig


__all__ = ["StageError", "StateError", "check_rows", "stage_recipe", "load_stage_model", "freeze_vision",
           "trainer_kwargs", "train_stage", "open_run", "run_settings", "run_stage_in", "ResumeFix", "last_checkpoint",
           "loss_figure", "summary_text", "is_adapter_dir", "tiny_or_random"]
