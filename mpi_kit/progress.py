"""What a training cell prints: one progress bar per stage and a one-line summary, nothing a class reads as an error.

Left alone, the libraries print a raw log dict per step (`{'loss': ...}`), "Loading weights" / "Writing model
shards" bars at every load and checkpoint, and warnings about things the kit already handles. `watch_stage` swaps
the Trainer's printers for a `StageProgress` callback (a bar only with progress=True; the summary line always),
`quiet_stage` keeps library bars off while a `run_*` function runs, and `install_warning_filters` (run when
`mpi_kit` is imported) drops two warnings that are not errors, each listed in `QUIET_WARNINGS` with the reason.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import time
from pathlib import Path

# ------------------------------------------------------------------------------------------------ warnings

# (logger name, message start, why it is safe to drop). A filter on one logger sees only that logger's records,
# so every other warning of these libraries still shows.
QUIET_WARNINGS = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community",
     "printed at import on CPUs with AVX512-BF16 when the optional `kernels` package (a Hub download) is missing; "
     "that kernel serves only bitsandbytes' packed-weight CPU inference path, which the kit switches off "
     "(mpi_kit.compat.disable_cpu_weight_packing), so nothing the kit runs would use it"),
    ("transformers.trainer_utils", "mtime may not be reliable on this filesystem",
     "a tiny model writes checkpoints less than a second apart, which transformers takes for a broken clock; it "
     "then orders checkpoints by step number, which is the right order anyway"),
)


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def install_warning_filters() -> None:
    """Attach the `QUIET_WARNINGS` filters (idempotent). Works before the library is imported: a logger made now
    is the one the library's `logging.getLogger(__name__)` gets later."""
    for name, start, _why in QUIET_WARNINGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.start == start for f in logger.filters):
            logger.addFilter(_DropMessage(start))


# ------------------------------------------------------------------------------------------------ library bars

HOUSEKEEPING_BARS = ("Loading weights", "Writing model shards")  # transformers' per-load and per-checkpoint bars


def _housekeeping_hook(factory, args, kwargs):
    if str(kwargs.get("desc", "")).startswith(HOUSEKEEPING_BARS):
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


@contextlib.contextmanager
def library_bars_off():
    """While inside: no "Loading weights" / "Writing model shards" bars from transformers and no bars from
    `datasets` ("Saving the dataset", "Map"); download bars still show. The previous settings come back after."""
    from transformers.utils import logging as hf_logging

    import datasets

    previous_hook = hf_logging.set_tqdm_hook(_housekeeping_hook)
    datasets_bars = datasets.is_progress_bar_enabled()
    if datasets_bars:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous_hook)
        if datasets_bars:
            datasets.enable_progress_bars()


def quiet_stage(run):
    """Decorator for a stage's `run_*` function: library bars stay off while it loads, trains and saves, and a
    finished run that is reused (nothing trains) says so in one line."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with library_bars_off():
            summary = run(*args, **kwargs)
        if isinstance(summary, dict) and summary.get("reused") and _main_process():
            out = signature.bind_partial(*args, **kwargs).arguments.get("out") or summary.get("stage", "stage")
            print(f"{Path(out).name}: already trained ({summary.get('steps')} steps) with these settings; reused "
                  f"as it is, nothing retrained", flush=True)
        return summary

    return wrapper


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# ------------------------------------------------------------------------------------------------ the stage bar

def _number(x) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) else "?"


def stage_summary_line(name: str, steps: int, max_steps: int, step0: int, seconds: float, losses: list,
                       rewards: list) -> str:
    """The line printed when a stage's training ends: steps (and where it resumed), time, loss (RL: reward) at the
    first and last logged step of this run. Only numbers from the trainer's own log."""
    done = f"{steps - step0} step{'s' if steps - step0 != 1 else ''}"
    if step0:
        done += f" (steps {step0 + 1}-{steps}, resumed from checkpoint-{step0})"
    parts = [f"{name}: {done} in {seconds:.1f} s"]
    if rewards:
        parts.append(f"reward {_number(rewards[0])} → {_number(rewards[-1])}")
    if losses:
        parts.append(f"loss {_number(losses[0])} → {_number(losses[-1])}")
    line = " · ".join(parts)
    if steps < max_steps:
        line += f" · stopped at step {steps} of {max_steps}: rerun into the same folder to resume"
    return line


def _callback_class():
    from transformers import TrainerCallback

    class StageProgress(TrainerCallback):
        """One tqdm bar for the whole stage (progress=True; loss, or reward for RL, beside it) and a one-line
        summary when training ends (always), instead of the Trainer printing its log dict at every step."""

        def __init__(self, name: str, progress: bool = False):
            self.name, self.progress = name, progress
            self.bar, self.losses, self.rewards = None, [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0 = time.time(), state.global_step
            self.losses, self.rewards = [], []
            if self.progress and state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.name, unit="step",
                                dynamic_ncols=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.losses.append(logs["loss"])
            if "reward" in logs:
                self.rewards.append(logs["reward"])
            if self.bar is not None and ("loss" in logs or "reward" in logs):
                shown = {k: f"{logs[k]:.3g}" for k in ("reward", "loss") if isinstance(logs.get(k), (int, float))}
                self.bar.set_postfix(shown, refresh=False)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if state.is_world_process_zero:
                print(stage_summary_line(self.name, state.global_step, state.max_steps, self.step0,
                                         time.time() - self.t0, self.losses, self.rewards), flush=True)

    return StageProgress


@functools.lru_cache(maxsize=None)
def stage_progress_class():
    """The `StageProgress` callback class (built on first use, so importing this module stays light)."""
    return _callback_class()


def watch_stage(trainer, progress: bool = False, name: str | None = None):
    """Replace the Trainer's log printers (a dict per step, or HF's own bar / notebook table) by one
    `StageProgress`, and give the model the tokenizer's special tokens now (see `align_special_tokens`)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    printers = [PrinterCallback, ProgressCallback]
    try:
        from transformers.utils.notebook import NotebookProgressCallback
        printers.append(NotebookProgressCallback)
    except ImportError:  # pragma: no cover
        pass
    for cb in list(trainer.callback_handler.callbacks):
        if isinstance(cb, tuple(printers)):
            trainer.remove_callback(cb)
    trainer.add_callback(stage_progress_class()(name or Path(trainer.args.output_dir).name, progress))
    align_special_tokens(trainer.model, trainer.processing_class)
    return trainer


def align_special_tokens(model, processing_class) -> None:
    """Make the model's config and generation config use the tokenizer's pad/bos/eos ids, as `Trainer.train()`
    would at its start, but before it, so it has nothing left to warn about ("The tokenizer has new PAD/BOS/EOS
    tokens ..."). The same values, set just before `train()` instead of inside it: the training is unchanged."""
    from transformers.trainer_utils import align_special_tokens as hf_align

    if processing_class is None or not hasattr(model, "config"):
        return
    logger = logging.getLogger("transformers.trainer_utils")
    quiet = _DropMessage("The tokenizer has new PAD/BOS/EOS tokens")  # the change is the fix: nothing to report
    logger.addFilter(quiet)
    try:
        hf_align(model, processing_class)
    finally:
        logger.removeFilter(quiet)


__all__ = ["install_warning_filters", "library_bars_off", "quiet_stage", "watch_stage", "stage_progress_class",
           "stage_summary_line", "align_special_tokens", "QUIET_WARNINGS"]
