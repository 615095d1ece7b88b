"""Stage 2 of TriMPI, CoT SFT, and the Direct SFT baseline (paper §4.1, §4.3, App. D.2), on TRL's SFTTrainer.

The input is the scene image and the query only, never the policy; the target is the CoT + answer
(`<think>...</think>\\boxed{Case k}`, mode "cot") or the answer alone (mode "direct"). Rows stay in TRL's
prompt/completion format, so the loss falls on the completion only: never on the prompt, its image tokens or
padding (full-sequence SFT on VLM data would train on `<|image_pad|>` placeholders).

Paper defaults (Table 5): LoRA r=8, LR 1e-4; CoT SFT 5 epochs on 2.5K rows, Direct SFT 2 epochs on 20K, batch
16x4. The GPU recipes keep 1e-4 but use r=16, since their one adapter also carries VM-CPT and RL (pass
`**{"lora.r": 8}` for the paper's rank); the tiny recipe fully fine-tunes. SFT starts from the base model, or from
a VM-CPT folder with `init=` (VM-CPT + CoT SFT, the TriMPI order).
"""
from __future__ import annotations

from .data import DataError, load_kit_data, message_text
from .progress import quiet_stage, watch_stage
from .recipes import as_recipe
from .stages import sft_stage
from .timing import stage_facts
from .training import (ResumeFix, check_rows, freeze_vision, load_stage_model, run_settings, run_stage_in,
                       stage_recipe, trainer_kwargs)

PAPER_DEFAULTS = {"lora": True, "r": 8, "learning_rate": 1e-4, "cot_epochs": 5, "direct_epochs": 2,
                  "batch": "16x4"}


def check_sft(ds, stage: str) -> None:
    """Columns, non-empty, image counts; and no policy document in the prompt (SFT data never shows the policy)."""
    check_rows(ds, stage)
    for i, prompt in enumerate(ds["prompt"]):
        text = message_text(prompt)
        if "# Condition" in text:
            raise DataError(f"{stage}: row {i} has the policy in its prompt; SFT trains on (image, query) alone. "
                            f"Use the cot or qa datasets (VM-CPT data goes to `mpi-kit cpt`)")


def replay_policy(cot, vmcpt, share: float):
    """CoT SFT rows with a `share` of them replaced by their VM-CPT twins: the same id, scene and CoT, with the
    policy in the prompt, so the model keeps reading its policy while it learns to answer without it. Which rows
    is fixed by `share` alone (same share, same rows); loss stays on the completion."""
    import random

    import datasets

    cols = ["prompt", "completion", "images"]
    twin = {r: i for i, r in enumerate(vmcpt["id"])}
    missing = [r for r in cot["id"] if r not in twin]
    if missing:
        raise DataError(f"policy_replay: {len(missing)} CoT rows (e.g. {missing[0]!r}) have no VM-CPT row with the "
                        f"same id; build both kinds from one `mpi-kit data` run (--kinds cot vmcpt)")
    rng = random.Random(f"replay/{share}")
    rows = [vmcpt[twin[r["id"]]] if rng.random() < share else r for r in cot.select_columns(cols + ["id"])]
    return datasets.Dataset.from_list([{k: r[k] for k in cols} for r in rows],
                                      features=cot.select_columns(cols).features)


def _trainer_class():
    from trl import SFTTrainer

    from .compat import patch_trl_cpu_logprobs

    patch_trl_cpu_logprobs()  # TRL 1.15 scores the loss with a Triton kernel even on a CPU

    class KitSFTTrainer(ResumeFix, SFTTrainer):
        """SFTTrainer that resumes Qwen-VL checkpoints correctly (see `ResumeFix`)."""

    return KitSFTTrainer


def sft_trainer(recipe="tiny", data_dir=None, out="runs/sft", mode: str = "cot", *, init=None, max_steps=None,
                limit=None, save_steps=None, callbacks=(), progress=False, train_vision=False, dataset=None,
                **overrides):
    """(trainer, processor, info) for CoT or Direct SFT: TRL's SFTTrainer on prompt/completion rows with images,
    completion-only loss, `max_length=None` (truncation could cut image tokens), fp32 on a CPU."""
    from trl import SFTConfig

    st = sft_stage(mode)  # the registry: its dataset kind, recipe section and title
    kind, section, stage = st.data, st.section, st.title
    recipe = stage_recipe(recipe, init, **overrides)
    ds = dataset if dataset is not None else load_kit_data(data_dir, kind)["train"]
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    check_sft(ds, stage)
    replay = getattr(recipe, section).policy_replay
    if replay and dataset is None:
        if mode != "cot":
            raise DataError(f"{stage}: policy_replay is for CoT SFT (its rows have VM-CPT twins with the policy); "
                            f"set sft_direct.policy_replay=0")
        ds = replay_policy(ds, load_kit_data(data_dir, "vmcpt")["train"], replay)
    ds = ds.select_columns(["prompt", "completion", "images"])
    r = getattr(recipe, section).lora_r
    merge = bool(r) and not recipe.lora.enabled  # this stage alone as LoRA, merged at its end (`train_stage`)
    loaded = as_recipe(recipe, **{"lora.enabled": True, "lora.r": r, "lora.alpha": 2 * r}) if merge else recipe
    model, processor = load_stage_model(loaded, init)
    frozen = 0 if train_vision else freeze_vision(model)
    kw = trainer_kwargs(recipe, getattr(recipe, section), out, max_steps, save_steps, progress)
    args = SFTConfig(**kw, max_length=None, completion_only_loss=True, packing=False, padding_free=False)
    trainer = _trainer_class()(model=model, args=args, train_dataset=ds, processing_class=processor,
                         callbacks=list(callbacks))
    watch_stage(trainer, progress)  # one bar (progress=True) and a summary line, not a log dict per step
    info = {"recipe": recipe, "mode": mode, "data": str(data_dir) if data_dir else None, "merge_lora": merge,
            "init": str(init) if init else None,
            "num_examples": len(ds), "vision_frozen_params": frozen, "paper_defaults": PAPER_DEFAULTS,
            **stage_facts(section, recipe, args, ds, processor)}  # precision and, on a GPU, the time estimate
    return trainer, processor, info


@quiet_stage
def run_sft(recipe="tiny", data_dir=None, out="runs/sft", mode: str = "cot", *, init=None, resume=True, **kw) -> dict:
    """Run CoT (mode="cot") or Direct (mode="direct") SFT into `out`, from the base model or `init` (a VM-CPT
    folder); resumes from `out`'s last checkpoint; returns the summary written to summary.json."""
    name = sft_stage(mode).name
    return run_stage_in(out, name, run_settings(name, recipe, data_dir, init=init, **kw),
                        lambda: sft_trainer(recipe, data_dir, out, mode, init=init, **kw), resume)


__all__ = ["run_sft", "sft_trainer", "check_sft", "replay_policy", "PAPER_DEFAULTS"]
