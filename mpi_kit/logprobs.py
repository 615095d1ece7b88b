"""Completion log-probs with each shared prompt run once: the training side of an RL step on a small model.

A GRPO or PolicyRollout group is G (or 2G) completions of ONE prompt, and every ratio is computed on it. TRL runs
the model over prompt + completion for every row; here each unique prompt (with its image) runs once, its keys and
values are repeated for the group's rows, and only the completions run per row. Gradients flow through the shared
keys and values, so log-probs, entropies and gradients are those of the row-by-row forward (tested).
"""
from __future__ import annotations

import torch

from .decode import _parts, rope_positions
from .rollout import _split_images, prompt_groups


def supported(model, *, extra_inputs: dict | None = None) -> bool:
    """Whether `shared_prompt_logps` handles this model and call: a Qwen2.5-VL model with full attention, no
    gradient checkpointing (it forbids the cache), and no model inputs beyond ids, masks and Qwen's image fields."""
    if _parts(model) is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_gradient_checkpointing", False):
        return False
    return not any(v is not None for v in (extra_inputs or {}).values())


def shared_prompt_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, *,
                        temperature: float = 1.0, compute_entropy: bool = False, pixel_values=None,
                        image_grid_thw=None, mm_token_type_ids=None):
    """(per-token log-probs (B, C), entropies (B, C) or None) of the last C = logits_to_keep tokens of each row,
    as TRL's `_get_per_token_logps_and_entropies` computes them (logits over `temperature`), with each run of
    identical prompt rows (ids, mask, image) forwarded once. input_ids: left-padded prompts + completions."""
    from transformers import DynamicCache
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    base, _, head = _parts(model)
    config = base.config
    C = logits_to_keep
    prompt_ids, prompt_mask = input_ids[:, :-C], attention_mask[:, :-C]
    completion_ids, completion_mask = input_ids[:, -C:], attention_mask[:, -C:]
    row_pixels = row_grids = None
    if pixel_values is not None:
        row_pixels, row_grids = _split_images(prompt_ids, pixel_values, image_grid_thw, config.image_token_id,
                                              config.vision_config.spatial_merge_size)
    starts, counts = prompt_groups(prompt_ids, prompt_mask, row_pixels)
    dev = input_ids.device
    first = torch.tensor(starts, device=dev)
    ids, mask = prompt_ids[first], prompt_mask[first]
    keep = mask.any(0)  # columns that are padding in every unique prompt are dropped
    ids, mask = ids[:, keep], mask[:, keep]
    inputs = {"input_ids": ids, "attention_mask": mask}
    if row_pixels is not None:
        inputs["pixel_values"] = torch.cat([row_pixels[i] for i in starts])
        inputs["image_grid_thw"] = torch.cat([row_grids[i] for i in starts])
    types = mm_token_type_ids[first, :-C][:, keep] if mm_token_type_ids is not None else None
    pos, nxt = rope_positions(base, ids, mask, inputs.get("image_grid_thw"), types)
    cache = DynamicCache(config=config.get_text_config(decoder=True))
    prompt_out = base.model(**inputs, position_ids=pos, past_key_values=cache, use_cache=True)
    rows = torch.repeat_interleave(torch.arange(len(starts), device=dev), torch.tensor(counts, device=dev))
    if len(starts) < input_ids.shape[0]:
        for layer in cache.layers:  # each prompt's keys/values, once per row of its run (gradients sum back)
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    steps = (nxt[rows][:, None] + torch.arange(C, device=dev))[None].expand(3, -1, -1)
    out = base.model(input_ids=completion_ids, attention_mask=torch.cat([mask[rows], completion_mask], 1),
                     position_ids=steps, past_key_values=cache, use_cache=True)
    # the prompt's last position predicts completion token 0; completion position j predicts token j + 1
    hidden = torch.cat([prompt_out.last_hidden_state[rows, -1:], out.last_hidden_state[:, :-1]], 1)
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logps = selective_log_softmax(logits, completion_ids)
    entropies = entropy_from_logits(logits) if compute_entropy else None
    return logps, entropies


__all__ = ["shared_prompt_logps", "supported"]
