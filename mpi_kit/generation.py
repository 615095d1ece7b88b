"""Greedy generation for evaluation: dataset rows (a conversational `prompt` and its `images`) in, completions out,
batched and left-padded. Every held-out accuracy the kit reports (the pipeline's, the notebooks', the tiny model's
card) is generated here; RL rollouts are sampled by TRL (`mpi_kit.rl`). Both decode through `mpi_kit.decode` (one
prefill per prompt, a preallocated cache, the model's arithmetic per step) unless told to use plain `generate`."""
from __future__ import annotations

import time

import torch

SETTINGS = ("no_policy", "in_context", "override")  # the eval splits: the MPI setting, In-Context, Policy Override


@torch.no_grad()
def generate_completions(model, processor, rows, max_new_tokens: int = 256, batch_size: int = 8,
                         progress: bool = False, stats: dict | None = None, fast: bool = True) -> list[str]:
    """Greedy completions for `rows`. `stats`, if given, accumulates "tokens" (new tokens, each completion's end
    counted once) and "seconds" (time inside `generate`). fast: `mpi_kit.decode.decode_generate` (the same
    tokens; models it does not support fall back); False: plain `model.generate`."""
    from .decode import rollout_generate

    from tqdm.auto import tqdm
    from trl.data_utils import prepare_multimodal_messages

    rows = list(rows)
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"
    device = next(model.parameters()).device
    out: list[str] = []
    for k in tqdm(range(0, len(rows), batch_size), desc="generate", disable=not progress):
        chunk = rows[k:k + batch_size]
        texts = [processor.apply_chat_template(prepare_multimodal_messages(r["prompt"], images=r["images"]),
                                               add_generation_prompt=True) for r in chunk]
        batch = processor(text=texts, images=[r["images"] for r in chunk], return_tensors="pt",
                          padding=True).to(device)
        t = time.time()
        with rollout_generate(model, "decode" if fast else "generate", fallback="generate") as m:
            ids = m.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, batch["input_ids"].shape[1]:]
        if stats is not None:
            stats["seconds"] = stats.get("seconds", 0.0) + time.time() - t
            ended = (new != tok.eos_token_id) & (new != tok.pad_token_id)
            stats["tokens"] = stats.get("tokens", 0) + int(ended.sum()) + len(chunk)
        out += processor.batch_decode(new, skip_special_tokens=True)
    return out


def answer(model, processor, rows, max_new_tokens: int = 128, batch_size: int = 8) -> list[str]:
    """Greedy completions for rows of a no-policy dataset (eval `no_policy`, cot/qa `test`): image + query only."""
    was_training = model.training
    model.eval()
    try:
        return generate_completions(model, processor, rows, max_new_tokens, batch_size)
    finally:
        model.train(was_training)  # a model that was training stays in training mode


def held_out(data_dir, setting: str = "no_policy", limit: int | None = None):
    """The eval split of one setting ('no_policy', 'in_context' or 'override'), `limit` rows spread over every
    policy and as many scenes as it can (`data.spread`), in the order they are evaluated."""
    from .data import load_kit_data, spread

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    return spread(load_kit_data(data_dir, "eval")[setting], limit)
