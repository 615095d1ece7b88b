"""Forward CoT (paper App. D.1): the base model answers each chosen (policy, scene) pair with the policy in context,
greedily; a completion is kept as CoT training data only when its boxed answer is the gold case.

A generator is any `generate(rows, max_new_tokens) -> completions` over rows with a conversational `prompt` and
their `images`: `model_generator` wraps a loaded model, `recipe_generator` loads the recipe's base model on first
use, and tests pass a stub. `data.build_datasets(cfg, generate=...)` calls `forward_cots` on its in-context rows.
"""
from __future__ import annotations

import io
from typing import Callable

from .rewards import parse_answer

Generate = Callable[[list, int], list]  # (rows with prompt + images, max_new_tokens) -> completion texts


def cot_budget(depth: int) -> int:
    """New tokens a forward CoT may take at depth N: a gold CoT is about 22 N + 4 tiny-tokenizer tokens."""
    return 24 + 24 * depth


def model_generator(model, processor) -> Generate:
    """Greedy completions of a loaded model (eval mode while it generates), batched as the caller slices rows."""
    from ...generation import generate_completions

    def generate(rows, max_new_tokens):
        was_training = model.training
        model.eval()
        try:
            return generate_completions(model, processor, rows, max_new_tokens, batch_size=max(1, len(rows)))
        finally:
            model.train(was_training)

    return generate


def recipe_generator(recipe="tiny") -> Generate:
    """`model_generator` of the recipe's base model (a Recipe, recipe name, hub id or folder; no LoRA adapter),
    loaded on the first call, so a build that needs no forward CoT never loads it."""
    loaded: list = []

    def generate(rows, max_new_tokens):
        if not loaded:
            from ...models import load_model

            loaded.append(model_generator(*load_model(recipe, lora=False)))
        return loaded[0](rows, max_new_tokens)

    return generate


def decoded(images: list) -> list:
    """Images as PIL images: an encoded `{"bytes": ...}` cell (a dataset row before saving) is decoded, so the
    model sees the pixels that evaluation will read back from disk."""
    from PIL import Image

    return [Image.open(io.BytesIO(im["bytes"])) if isinstance(im, dict) else im for im in images]


def forward_cots(rows: list[dict], generate: Generate, max_new_tokens: int, batch_size: int = 8,
                 progress: bool = True) -> tuple[list[str | None], dict]:
    """Generate for every in-context row in batches and keep the completions whose parsed answer is the row's
    `case`: (one kept completion or None per row, counts {"asked", "generated", "answered", "kept"})."""
    from tqdm.auto import tqdm

    kept: list[str | None] = []
    counts = {"asked": len(rows), "generated": 0, "answered": 0, "kept": 0}
    bar = tqdm(total=len(rows), desc="forward CoT", disable=not progress)
    for k in range(0, len(rows), batch_size):
        chunk = [{**r, "images": decoded(r["images"])} for r in rows[k:k + batch_size]]
        texts = list(generate(chunk, max_new_tokens))
        if len(texts) != len(chunk):
            raise ValueError(f"the CoT generator returned {len(texts)} completions for {len(chunk)} rows")
        for r, t in zip(chunk, texts):
            parsed = parse_answer(t)
            right = parsed is not None and parsed == r["case"]
            kept.append(t.strip() if right else None)
            counts["generated"] += 1
            counts["answered"] += parsed is not None
            counts["kept"] += right
        bar.update(len(chunk))
        bar.set_postfix(kept=counts["kept"])
    bar.close()
    return kept, counts


__all__ = ["Generate", "cot_budget", "decoded", "forward_cots", "model_generator", "recipe_generator"]
