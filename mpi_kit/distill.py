"""Policy distillation, a method beside TriMPI: the model *with* its policy in context teaches itself *without* it
(context distillation, Snell et al. 2022; prompt baking, Bhargava et al. 2024). It needs no gold answers.

The teacher is the stage's starting model reading (policy, image, query), frozen; the student is the model being
trained, reading (image, query) alone. Both score the same completion, and the loss is KL(teacher || student)
between their next-token distributions on the completion tokens only: the policy, the prompt and the visual tokens
never carry loss. Completions are the teacher's own (source "teacher": it answers with the policy in context, greedy
or at the recipe's temperature) or the data's CoT rows (source "cot").

One copy of the model in memory under LoRA: the teacher is the adapter-off model (peft's `disable_adapter()`), or,
when the stage continues an adapter (a LoRA VM-CPT folder), that adapter loaded a second time, frozen. A full
fine-tune keeps a frozen copy.
"""
from __future__ import annotations

import contextlib
import copy

from .data import DataError, load_kit_data, message_text, with_policy
from .progress import quiet_stage, watch_stage
from .stages import STAGES
from .training import (ResumeFix, StageError, check_rows, freeze_vision, is_adapter_dir, load_stage_model,
                       run_settings, run_stage_in, stage_recipe, trainer_kwargs)

STAGE = STAGES["distill"]  # name, dataset kind and recipe section (mpi_kit.stages)
SOURCES = ("teacher", "cot")
TEACHER_ADAPTER = "teacher"  # the starting adapter's frozen twin, when the stage continues an adapter


# ------------------------------------------------------------------------------------------------ the loss

def policy_kl(teacher_logits, student_logits, mask):
    """KL(teacher || student) per completion token, averaged over the tokens that carry loss (`mask` 1).

    Per token: sum over the vocabulary of p_teacher * (log p_teacher - log p_student). It is 0 exactly when the
    student predicts what the teacher predicts; its gradient pulls the student towards the teacher's distribution."""
    import torch.nn.functional as F

    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    per_token = (t.exp() * (t - s)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def completion_logits(model, batch: dict):
    """The logits that predict each completion token, (batch, longest completion, vocab). Sequences end with their
    completion (left padding), so the last `n + 1` positions hold them: nothing else of the vocabulary-wide logits
    is kept."""
    n = batch["completion_mask"].shape[1]
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    return model(**inputs, logits_to_keep=n + 1).logits[:, :-1]


# ----------------------------------------------------------------------------------------------- the inputs

def prompt_of(row: dict, policy: bool) -> tuple[list, list]:
    """(messages, images) of a row's prompt as the student sees it (policy False) or the teacher (policy True)."""
    prompt, images = list(row["prompt"]), list(row["images"])
    if policy:
        return with_policy(prompt, row["policy"]), list(row["policy_images"]) + images
    return prompt, images


def encode(processor, rows, completions: list[list[int]], policy: bool) -> dict:
    """Model inputs for prompt + completion, one row each, left-padded so every sequence ends with its completion,
    and `completion_mask` (batch, longest completion): 1 on a row's completion tokens, 0 on the padding in front of
    a shorter one. Nothing else can carry loss: the policy, the prompt and its image tokens sit before it."""
    import torch

    texts, images = [], []
    for r in rows:
        messages, imgs = prompt_of(r, policy)
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        images.append(imgs)
    enc = processor(text=texts, images=images if any(images) else None, padding=True, return_tensors="pt",
                    add_special_tokens=False)
    keep = enc["attention_mask"].bool()
    per_token = [k for k, v in enc.items() if torch.is_tensor(v) and v.shape == keep.shape]  # ids, mask, types
    n = max(len(c) for c in completions)
    length = max(int(m.sum()) + len(c) for m, c in zip(keep, completions))
    pad = processor.tokenizer.pad_token_id
    out = {k: v for k, v in enc.items() if k not in per_token}  # pixel_values, image_grid_thw
    for k in per_token:
        fill = pad if k == "input_ids" else 0
        rows_ = []
        for v, m, c in zip(enc[k], keep, completions):
            tail = torch.tensor(c if k == "input_ids" else [1 if k == "attention_mask" else 0] * len(c),
                                dtype=v.dtype)
            seq = torch.cat([v[m], tail])
            rows_.append(torch.cat([torch.full((length - len(seq),), fill, dtype=v.dtype), seq]))
        out[k] = torch.stack(rows_)
    mask = torch.zeros(len(rows), n)
    for i, c in enumerate(completions):
        mask[i, n - len(c):] = 1
    out["completion_mask"] = mask
    return out


def cot_completion(processor, row: dict) -> list[int]:
    """A CoT row's completion as token ids, as the chat template writes it after the prompt (its end-of-turn
    included, so the student also learns where to stop)."""
    prompt, completion = list(row["prompt"]), list(row["completion"])
    head = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    whole = processor.apply_chat_template(prompt + completion, tokenize=False)
    if not whole.startswith(head):
        raise StageError("the chat template renders the prompt differently once a completion follows it; "
                         "distillation needs the completion to extend the prompt (a Qwen-VL template does)")
    return processor.tokenizer(whole[len(head):], add_special_tokens=False)["input_ids"]


def up_to_end(ids: list[int], eos: set[int]) -> list[int]:
    """A generated completion up to and including its first end token (all of it when it never ended)."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


# ---------------------------------------------------------------------------------------------- the teacher

class Teacher:
    """The starting model with the policy in context, frozen: `with teacher() as m:` gives a model to run it.
    LoRA: the student with its adapter switched off (or switched to the starting adapter's frozen twin); a full
    fine-tune: a frozen copy made before the first step."""

    def __init__(self, model, init=None):
        self.model, self.twin, self.copy = model, False, None
        if init is not None and is_adapter_dir(init):  # adapter off would skip the stage that wrote `init`
            model.load_adapter(str(init), adapter_name=TEACHER_ADAPTER, is_trainable=False)
            self.twin = True
        elif not hasattr(model, "disable_adapter"):
            self.copy = copy.deepcopy(model).eval().requires_grad_(False)

    @property
    def kind(self) -> str:
        return "frozen copy" if self.copy is not None else "starting adapter" if self.twin else "adapter off"

    @contextlib.contextmanager
    def __call__(self):
        if self.copy is not None:
            yield self.copy
            return
        was_training = self.model.training
        self.model.eval()
        try:
            if self.twin:
                active = self.model.active_adapter
                self.model.set_adapter(TEACHER_ADAPTER, inference_mode=True)
                try:
                    yield self.model
                finally:
                    self.model.set_adapter(active)  # trainable again
            else:
                with self.model.disable_adapter():
                    yield self.model
        finally:
            self.model.train(was_training)


def _trainer_class():
    import torch
    from transformers import Trainer

    class DistillTrainer(ResumeFix, Trainer):
        """A Trainer whose loss is `policy_kl` between the teacher (policy in context) and the student (none)."""

        def __init__(self, *a, teacher: Teacher, source: str, settings, **kw):
            super().__init__(*a, **kw)
            self.teacher, self.source, self.settings = teacher, source, settings
            self.model_accepts_loss_kwargs = False  # our loss is a per-token mean: divide by accumulation

        def completions(self, rows) -> list[list[int]]:
            """The completion of each row as token ids: the data's CoT, or what the teacher writes now."""
            if self.source == "cot":
                return [cot_completion(self.processing_class, r) for r in rows]
            from .decode import rollout_generate

            batch = encode(self.processing_class, rows, [[]] * len(rows), policy=True)
            batch.pop("completion_mask")
            batch = {k: v.to(self.args.device) for k, v in batch.items()}
            temperature = self.settings.temperature
            sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
            with torch.no_grad(), self.teacher() as m, rollout_generate(m, "decode", fallback="generate") as g:
                ids = g.generate(**batch, max_new_tokens=self.settings.max_completion_length, **sampling)
            eos = m.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
            eos.add(self.processing_class.tokenizer.eos_token_id)
            return [up_to_end(c, eos) for c in ids[:, batch["input_ids"].shape[1]:].tolist()]

        def distill_loss(self, model, rows, completions=None, teacher_sees_policy: bool = True):
            """The KL on `rows`; with teacher_sees_policy False both read the same prompt, so at the start, when
            the student still is the teacher, it is 0: what the loss measures is the policy's effect."""
            completions = completions if completions is not None else self.completions(rows)
            device = self.args.device
            student = {k: v.to(device) for k, v in encode(self.processing_class, rows, completions, False).items()}
            teacher = {k: v.to(device) for k, v in
                       encode(self.processing_class, rows, completions, teacher_sees_policy).items()}
            with torch.no_grad(), self.teacher() as m:
                t_logits = completion_logits(m, teacher)
            return policy_kl(t_logits, completion_logits(model, student), student["completion_mask"])

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = self.distill_loss(model, inputs["rows"])
            return (loss, None) if return_outputs else loss

    return DistillTrainer


# ------------------------------------------------------------------------------------------------ the data

def check_distill(ds, stage: str = STAGE.title, source: str = "cot") -> None:
    """Columns, non-empty, image counts, and a policy on every row: the teacher reads it, the student never does.
    Source "teacher" needs no completion in the data (the teacher writes them): rows without answers distil too."""
    check_rows(ds, stage, ("prompt", "completion", "images", "policy", "policy_images"), source != "teacher")
    for i, (prompt, policy) in enumerate(zip(ds["prompt"], ds["policy"])):
        if not "".join(p.get("text") or "" for p in policy).strip():
            raise DataError(f"{stage}: row {i} has no policy; the teacher reads the policy the student learns to do "
                            f"without. Use the rl data (`mpi-kit data --kinds rl`), whose rows carry it")
        text = message_text(prompt)
        if "# Condition" in text:
            raise DataError(f"{stage}: row {i} has the policy in its prompt; the student must read (image, query) "
                            f"alone, with the policy in the `policy` column for the teacher (the rl data)")


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise StageError(f"source must be one of {', '.join(SOURCES)}, got {source!r}: 'teacher' distils on "
                         f"completions the teacher writes, 'cot' on the data's CoT rows")


def distill_data(data_dir, source: str):
    """The rows to distil on: the rl split (no-policy prompt, the policy beside it) for source "teacher"; for "cot",
    the CoT rows, each given the policy of its rl twin (the same id)."""
    import datasets

    check_source(source)
    rl = load_kit_data(data_dir, STAGE.data)["train"]
    if source == "teacher":
        return rl
    cot = load_kit_data(data_dir, "cot")["train"]
    twin = {r: i for i, r in enumerate(rl["id"])}
    missing = [r for r in cot["id"] if r not in twin]
    if missing:
        raise DataError(f"{STAGE.title}: {len(missing)} CoT rows (e.g. {missing[0]!r}) have no rl row with the same "
                        f"id to take their policy from; build both kinds from one `mpi-kit data` run "
                        f"(--kinds cot rl)")
    policies = rl.select([twin[r] for r in cot["id"]]).select_columns(["policy", "policy_images"])
    return datasets.concatenate_datasets([cot.select_columns(["prompt", "completion", "images"]), policies], axis=1)


# ---------------------------------------------------------------------------------------------- the stage

def distill_trainer(recipe="tiny", data_dir=None, out="runs/distill", *, init=None, max_steps=None,
                    source: str = "teacher", limit=None, save_steps=None, callbacks=(), progress=False,
                    train_vision=False, dataset=None, **overrides):
    """(trainer, processor, info) for policy distillation: the rl rows (or the CoT rows, source "cot", or
    `dataset`), the recipe's model or `init` as both student and teacher, `policy_kl` as the loss."""
    from transformers import TrainingArguments

    from .models import resolve_precision

    check_source(source)
    recipe = stage_recipe(recipe, init, **overrides)
    ds = dataset if dataset is not None else distill_data(data_dir, source)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    check_distill(ds, source=source)
    ds = ds.select_columns(["prompt", "completion", "images", "policy", "policy_images"])
    model, processor = load_stage_model(recipe, init)
    teacher = Teacher(model, init)  # before any step: the teacher is the starting model
    frozen = 0 if train_vision else freeze_vision(model)
    settings = getattr(recipe, STAGE.section)
    args = TrainingArguments(**trainer_kwargs(recipe, settings, out, max_steps, save_steps, progress))
    trainer = _trainer_class()(model=model, args=args, train_dataset=ds, data_collator=lambda rows: {"rows": rows},
                               processing_class=processor, callbacks=list(callbacks), teacher=teacher,
                               source=source, settings=settings)
    watch_stage(trainer, progress)  # one bar (progress=True) and a summary line, not a log dict per step
    info = {"recipe": recipe, "data": str(data_dir) if data_dir else None, "init": str(init) if init else None,
            "source": source, "teacher": teacher.kind, "num_examples": len(ds), "vision_frozen_params": frozen,
            "precision": resolve_precision(recipe.precision, recipe.device), "time_estimate": None}
    return trainer, processor, info


@quiet_stage
def run_distill(recipe="tiny", data_dir=None, out="runs/distill", init=None, max_steps=None,
                source: str = "teacher", *, resume=True, **kw) -> dict:
    """Run policy distillation into `out`, from the base model or `init` (e.g. a VM-CPT folder), on completions the
    teacher writes (source "teacher") or the data's CoT (source "cot"); resumes from `out`'s last checkpoint and
    returns the summary written to summary.json."""
    check_source(source)  # before any folder is touched
    kw = dict(kw, init=init, max_steps=max_steps, source=source)
    return run_stage_in(out, STAGE.name, run_settings(STAGE.name, recipe, data_dir, **kw),
                        lambda: distill_trainer(recipe, data_dir, out, **kw), resume)


__all__ = ["run_distill", "distill_trainer", "distill_data", "check_distill", "policy_kl", "completion_logits",
           "encode", "Teacher", "SOURCES"]
