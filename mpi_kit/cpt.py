"""Stage 1 of TriMPI, VM-CPT (visually-masked continual pretraining, paper §4.2 Eq. 2).

Each sequence is the whole policy (text + policy images), the scene image, the query, the CoT and the answer, in
one chat. Next-token loss falls on every text token, the policy text included: that is what writes the policy into
the weights. Visual tokens (`<|image_pad|>` and the `<|vision_start|>`/`<|vision_end|>` markers around every
image) are continuous embeddings with nothing to predict, so they carry label -100, as does padding.

Paper defaults (Table 5): full-parameter training, 5 epochs, LR 1e-5, batch 16x8. Full FT moves every weight a
little; a LoRA adapter moves a rank-r slice, so LoRA needs ~10x the rate (the paper's own LoRA SFT uses 1e-4):
the GPU recipes run VM-CPT as (Q)LoRA at 1e-4 for 5 epochs on an effective batch of 16. The tiny recipe is a full
fine-tune at 3e-4: a ~5M-parameter model trained for minutes needs larger steps than a 7B instruct model. The
vision tower stays frozen by default (LLaMA-Factory's default; the paper does not say).
"""
from __future__ import annotations

import re

from .data import DataError, load_kit_data, message_text
from .models import vision_token_ids
from .progress import quiet_stage, watch_stage
from .stages import STAGES
from .timing import stage_facts
from .training import (ResumeFix, StageError, check_rows, freeze_vision, load_stage_model, run_settings,
                       run_stage_in, stage_recipe, trainer_kwargs)

STAGE = STAGES["vm_cpt"]  # name, dataset kind and recipe section (mpi_kit.stages)

PAPER_DEFAULTS = {"full_finetune": True, "num_train_epochs": 5, "learning_rate": 1e-5, "batch": "16x8"}
_NAME_IN_QUERY = re.compile(r"Policy: ([^\s,?]+)")


def policy_name_of(row: dict) -> str:
    """The policy a VM-CPT row teaches: its `policy_name`, else the name its query cites ('Policy: <name>')."""
    name = (row.get("policy_name") or "").strip()
    if not name:
        text = message_text(row["prompt"])
        found = _NAME_IN_QUERY.findall(text)
        name = found[-1] if found else ""
    return name


def check_vmcpt(ds, stage: str = STAGE.title) -> None:
    """Clear errors before training: columns, empty data, image counts, and a policy that states its name.

    A nameless policy can arrive from a hand-made dataset (empty `policy_name`, a policy document without its
    'Policy: <name>' header, or CoT rows passed as VM-CPT data). VM-CPT binds the policy's text to its name, which
    is how a query 'According to Policy: <name>' recalls it later, so such rows would teach nothing usable.
    """
    check_rows(ds, stage)
    for i in range(len(ds)):
        row = {k: ds[i][k] for k in ("prompt",) + (("policy_name",) if "policy_name" in ds.column_names else ())}
        name = policy_name_of(row)
        if not name:
            raise DataError(f"{stage}: row {i} has no policy name (empty `policy_name` and no 'Policy: <name>' in "
                            f"its query); VM-CPT learns each policy under its name")
        content = row["prompt"][0]["content"]
        last_image = max((j for j, p in enumerate(content) if p["type"] == "image"), default=len(content))
        before = "".join(p.get("text") or "" for p in content[:last_image] if p["type"] == "text")
        if f"Policy: {name}" not in before:
            raise DataError(f"{stage}: row {i}: the prompt holds no policy document stating its name "
                            f"('Policy: {name}' before the scene image). VM-CPT rows carry the whole policy, "
                            f"headed by its name; build them with `mpi-kit data --kinds vmcpt` (CoT rows have no "
                            f"policy)")


class VMCPTCollator:
    """Render each row (prompt + completion) through the chat template as one sequence and label it for Eq. 2:
    labels = input ids on every text token, -100 on visual tokens and padding."""

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.max_length = max_length
        self.visual = vision_token_ids(processor)

    def texts(self, rows) -> list[str]:
        return [self.processor.apply_chat_template(list(r["prompt"]) + list(r["completion"]), tokenize=False)
                for r in rows]

    def __call__(self, rows) -> dict:
        import torch

        images = [list(r["images"]) for r in rows]
        batch = self.processor(text=self.texts(rows), images=images if any(images) else None, padding=True,
                               padding_side="right", return_tensors="pt", add_special_tokens=False)
        ids = batch["input_ids"]
        if self.max_length is not None and ids.shape[1] > self.max_length:
            raise DataError(f"VM-CPT: a sequence of {ids.shape[1]} tokens exceeds max_length={self.max_length}; "
                            f"truncating would cut image tokens. Lower max_pixels or raise max_length")
        labels = ids.clone()
        labels[batch["attention_mask"] == 0] = -100
        labels[torch.isin(ids, torch.tensor(self.visual))] = -100
        batch["labels"] = labels
        return dict(batch)


def cpt_trainer(recipe="tiny", data_dir=None, out="runs/vm_cpt", *, init=None, max_steps=None, limit=None,
                save_steps=None, callbacks=(), progress=False, train_vision=False, dataset=None, **overrides):
    """(trainer, processor, info) for VM-CPT, ready to `train_stage`: the vmcpt train split (or `dataset`), the
    recipe's model (or `init`, a previous stage's folder), the visual-mask collator."""
    from transformers import Trainer, TrainingArguments

    recipe = stage_recipe(recipe, init, **overrides)
    ds = dataset if dataset is not None else load_kit_data(data_dir, STAGE.data)["train"]
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    check_vmcpt(ds)
    model, processor = load_stage_model(recipe, init)
    frozen = 0 if train_vision else freeze_vision(model)
    kw = trainer_kwargs(recipe, getattr(recipe, STAGE.section), out, max_steps, save_steps, progress)
    args = TrainingArguments(**kw)
    trainer = type("CPTTrainer", (ResumeFix, Trainer), {})(model=model, args=args, train_dataset=ds,
                                                           data_collator=VMCPTCollator(processor),
                      processing_class=processor, callbacks=list(callbacks))
    watch_stage(trainer, progress)  # one bar (progress=True) and a summary line, not a log dict per step
    info = {"recipe": recipe, "data": str(data_dir) if data_dir else None, "init": str(init) if init else None,
            "num_examples": len(ds), "vision_frozen_params": frozen, "paper_defaults": PAPER_DEFAULTS,
            **stage_facts(STAGE.section, recipe, args, ds, processor)}  # precision and, on a GPU, the time estimate
    return trainer, processor, info


@quiet_stage
def run_cpt(recipe="tiny", data_dir=None, out="runs/vm_cpt", *, resume=True, **kw) -> dict:
    """Run VM-CPT into `out` (resuming from its last checkpoint) and return the summary written to summary.json.
    Keywords: init, max_steps, limit (rows), save_steps, callbacks, progress, train_vision, and recipe overrides
    such as `**{"vm_cpt.learning_rate": 1e-4}`."""
    return run_stage_in(out, STAGE.name, run_settings(STAGE.name, recipe, data_dir, **kw),
                        lambda: cpt_trainer(recipe, data_dir, out, **kw), resume)


# ------------------------------------------------------------------------------------------- looking at it

def token_labels(processor, row) -> list[tuple[str, bool]]:
    """(token text, carries loss) for one row as VM-CPT sees it; runs of image pads are folded into one entry."""
    coll = VMCPTCollator(processor)
    b = coll([row])
    out: list[tuple[str, bool]] = []
    for tid, lab in zip(b["input_ids"][0].tolist(), b["labels"][0].tolist()):
        tok = processor.tokenizer.decode([tid])
        if out and tok == "<|image_pad|>" and out[-1][0].startswith("<|image_pad|>"):
            n = int(out[-1][0].split("x")[-1]) + 1 if "x" in out[-1][0] else 2
            out[-1] = (f"<|image_pad|>x{n}", False)
        else:
            out.append((tok, lab != -100))
    return out


def loss_mask_html(processor, row) -> str:
    """The row's tokens as HTML: green = carries loss (text), grey = masked (visual tokens)."""
    import html

    spans = []
    for tok, has_loss in token_labels(processor, row):
        style = "background:#c8f7c5" if has_loss else "background:#ddd;color:#777"
        spans.append(f'<span style="{style};border-right:1px solid #fff">{html.escape(tok)}</span>')
    legend = ('<p><span style="background:#c8f7c5">text: carries loss</span> '
              '<span style="background:#ddd;color:#777">visual: label -100</span></p>')
    return legend + '<div style="font-family:monospace;white-space:pre-wrap;line-height:1.6">' + "".join(spans) + \
        "</div>"


def recite_policy(model, processor, name: str, max_new_tokens: int = 200) -> str:
    """Greedy continuation of a user turn that opens with 'Policy: <name>\\n\\n': after VM-CPT the model should go
    on with the policy's instruction and conditions, with no policy anywhere in the prompt."""
    import torch

    marker = "\x00"
    chat = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": marker}]}],
                                         tokenize=False)
    prefix = chat.split(marker)[0] + f"Policy: {name}\n\n"
    enc = processor.tokenizer(prefix, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def recital_score(recited: str, policy_text: str, name: str) -> float:
    """Share of the policy body (after its 'Policy: <name>' header) recited correctly from the start, char by char."""
    body = policy_text.split(f"Policy: {name}\n\n", 1)[-1]
    n = 0
    for a, b in zip(recited, body):
        if a != b:
            break
        n += 1
    return n / max(len(body), 1)


__all__ = ["VMCPTCollator", "check_vmcpt", "cpt_trainer", "run_cpt", "token_labels",
           "loss_mask_html", "recite_policy", "recital_score", "PAPER_DEFAULTS", "StageError"]
