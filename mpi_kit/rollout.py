"""Fast rollouts: prefill each prompt once for its whole group, then decode the group (static cache + compile on CUDA).

GRPO-style trainers ask `generate` for G completions of each prompt by repeating the prompt G times, so plain
`generate` prefills the same (image + query [+ policy]) tokens G times. `shared_prefill_generate` finds the runs
of identical rows, prefills each unique prompt once (minus its last token) into a `DynamicCache`, expands that
cache to the G rows with the cache's own `batch_repeat_interleave` / `batch_select_indices`, and lets
`model.generate` continue from it: the last prompt token and every new token are decoded by `generate` itself, so
sampling, stopping criteria, logits processors and LoRA adapters all behave as usual.

`static=True` copies the expanded cache into a `StaticCache` sized prompt + max_new_tokens. On a CUDA GPU
`generate` then compiles its decoding step (`torch.compile`, the library's auto-compile for static caches); on a
CPU it runs the same static cache uncompiled, and only for long prompts (>= STATIC_MIN_PROMPT tokens): there a
`DynamicCache` re-copies the whole cache at every step (`torch.cat`), while for short prompts the static cache's
fixed-size attention costs more than it saves (measured: docs/results.md, "Rollout speed on the CPU").

On the CPU it also swaps, for the duration of the call, the language model's attention for `decode_attention`:
one new token per row attends to the cache with the KV heads grouped in a matmul, instead of SDPA's CPU kernel
on a cache first copied `num_heads / num_kv_heads` times (`repeat_kv`, which transformers does whenever there is a
padding mask): the longer the policy in context, the more it saves (docs/results.md).

Results: greedy decoding gives the same tokens as plain `generate` (tested). With sampling, the same seed draws
the same random numbers in the same order (decoding runs at the full batch either way), so tokens match unless a
floating-point difference of the prefill (a batch of U prompts instead of U*G, the last prompt token computed in
the first decode step) moves a logit across a sampling boundary: ~1e-6 relative in fp32, larger in bf16.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

DECODE_ATTENTION = "mpi_kit_decode"
STATIC_MIN_PROMPT = 384  # CPU: prompts at least this long decode into a StaticCache (see the module docstring)


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA, except for one query token per row (decoding): softmax(q K^T) V with the query heads grouped over
    their shared KV head by a reshape, so the KV cache is read in place, never repeated. Masks as SDPA's (bool)."""
    if query.shape[2] != 1 or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    B, H, _, D = query.shape
    Hkv, L = key.shape[1], key.shape[2]
    q = query.reshape(B, Hkv, H // Hkv, D)  # query head h uses KV head h // (H / Hkv), as repeat_kv lays them out
    scores = torch.matmul(q, key.transpose(-1, -2)) * (scaling if scaling is not None else D ** -0.5)
    if attention_mask is not None:
        mask = attention_mask[:, :, -1:, :L]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(scores.softmax(-1).to(value.dtype), value)  # (B, Hkv, H/Hkv, D)
    return out.reshape(B, H, 1, D).transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def grouped_decode_attention(model, enable: bool = True):
    """While inside, the language model decodes with `decode_attention` (when it was on "sdpa"); restored after."""
    text = model.config.get_text_config(decoder=True)
    before = text._attn_implementation
    if not enable or before != "sdpa":
        yield model
        return
    model.set_attn_implementation({"text_config": DECODE_ATTENTION})
    try:
        yield model
    finally:
        model.set_attn_implementation({"text_config": before})


def _rope_holders(model) -> list:
    """Modules that keep Qwen-VL's multimodal rope offsets (`rope_deltas`) between prefill and decoding."""
    return [m for m in model.modules() if "rope_deltas" in vars(m)]


def prompt_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, row_pixels: list | None = None):
    """(first row of each run, run lengths) for runs of consecutive identical rows (ids, mask and image pixels)."""
    starts, counts = [], []
    for i in range(input_ids.shape[0]):
        same = bool(starts) and torch.equal(input_ids[i], input_ids[starts[-1]]) and \
            torch.equal(attention_mask[i], attention_mask[starts[-1]]) and \
            (row_pixels is None or torch.equal(row_pixels[i], row_pixels[starts[-1]]))
        if same:
            counts[-1] += 1
        else:
            starts.append(i)
            counts.append(1)
    return starts, counts


def _split_images(input_ids, pixel_values, image_grid_thw, image_token_id: int, merge: int):
    """Per-row (pixel patches, grid rows): each image owns prod(thw) patch rows and prod(thw)/merge^2 tokens."""
    tokens_per_row = (input_ids == image_token_id).sum(1).tolist()
    per_image_tokens = (image_grid_thw.prod(-1) // (merge * merge)).tolist()
    pixels, grids, img, patch = [], [], 0, 0
    for n in tokens_per_row:
        first_img, first_patch = img, patch
        while n > 0:
            n -= per_image_tokens[img]
            patch += int(image_grid_thw[img].prod())
            img += 1
        pixels.append(pixel_values[first_patch:patch])
        grids.append(image_grid_thw[first_img:img])
    return pixels, grids


def shared_prefill_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                            generation_config=None, static: bool | None = None,
                            grouped_decode: bool | None = None, per_prompt_prefill: bool | None = None, **kwargs):
    """`model.generate(input_ids, attention_mask, **kwargs)` with one prefill per run of identical prompt rows.

    Same inputs and output as `generate` (prompt + completion ids, left-padded prompts); `pixel_values`,
    `image_grid_thw`, `mm_token_type_ids` are split per row and deduplicated with the prompts. static: None =
    a StaticCache on CUDA (compiled decoding), and on the CPU for prompts of >= STATIC_MIN_PROMPT tokens;
    True/False forces it. Falls back to plain `generate` when no prompt repeats and no static cache is asked for.
    grouped_decode: None = `decode_attention` on the CPU only.
    per_prompt_prefill: None = prefill the unique prompts one by one, unpadded, when padding would be over a quarter
    of a batched prefill (PoRo's one-call generation pads its no-policy prompts to the policy-aware ones)."""
    if grouped_decode is None:
        grouped_decode = input_ids.device.type == "cpu"
    with grouped_decode_attention(model, grouped_decode):
        return _shared_prefill_generate(model, input_ids, attention_mask, generation_config=generation_config,
                                        static=static, per_prompt_prefill=per_prompt_prefill, **kwargs)


def _prefill(model, input_ids, attention_mask, starts, row_pixels, row_grids, mm_types, per_prompt: bool):
    """DynamicCache of every prompt but its last token, one row per unique prompt (rows `starts`), left-padded as
    in the batch; leaves each row's multimodal rope offset in the model's `rope_deltas`. per_prompt: prefill each
    prompt alone without its padding (then pad its cache with zeros, which the attention mask hides; the rope
    offsets count real tokens only, so they need no shift) instead of one padded batch."""
    from transformers import DynamicCache

    text_config = model.config.get_text_config(decoder=True)
    holders = _rope_holders(model)
    parts = []
    for rows in ([[s] for s in starts] if per_prompt else [starts]):
        idx = torch.tensor(rows, device=input_ids.device)
        keep = attention_mask[rows[0], :-1].bool() if per_prompt else slice(None)
        inputs = {"input_ids": input_ids[idx, :-1][:, keep], "attention_mask": attention_mask[idx, :-1][:, keep]}
        if row_pixels is not None:
            inputs["pixel_values"] = torch.cat([row_pixels[i] for i in rows])
            inputs["image_grid_thw"] = torch.cat([row_grids[i] for i in rows])
        if mm_types is not None:
            inputs["mm_token_type_ids"] = mm_types[idx, :-1][:, keep]
        pad = input_ids.shape[1] - 1 - inputs["input_ids"].shape[1]
        for m in holders:
            m.rope_deltas = None  # a fresh prefill computes them
        cache = DynamicCache(config=text_config)
        with torch.no_grad():
            model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1)
        parts.append((cache, pad, [m.rope_deltas for m in holders]))  # offsets count real tokens: padding-free
    for j, m in enumerate(holders):
        deltas = [p[2][j] for p in parts]
        m.rope_deltas = None if deltas[0] is None else torch.cat(deltas)
    if len(parts) == 1:
        return parts[0][0]
    def left_pad(t, n):  # (B, H, L, D): n zero positions in front of L
        return torch.nn.functional.pad(t, (0, 0, n, 0))

    cache = DynamicCache(config=text_config)
    for layer in range(len(parts[0][0].layers)):
        cache.update(torch.cat([left_pad(c.layers[layer].keys, n) for c, n, _ in parts]),
                     torch.cat([left_pad(c.layers[layer].values, n) for c, n, _ in parts]), layer)
    return cache


def _shared_prefill_generate(model, input_ids, attention_mask, *, generation_config, static, per_prompt_prefill,
                             **kwargs):
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if static is None:
        static = input_ids.device.type == "cuda" or input_ids.shape[1] >= STATIC_MIN_PROMPT
    pixel_values = kwargs.pop("pixel_values", None)
    image_grid_thw = kwargs.pop("image_grid_thw", None)
    mm_types = kwargs.pop("mm_token_type_ids", None)
    config = model.config
    row_pixels = row_grids = None
    if pixel_values is not None:
        merge = config.vision_config.spatial_merge_size
        row_pixels, row_grids = _split_images(input_ids, pixel_values, image_grid_thw, config.image_token_id, merge)
    starts, counts = prompt_groups(input_ids, attention_mask, row_pixels)
    if len(starts) == input_ids.shape[0] and not static:
        extra = {k: v for k, v in (("pixel_values", pixel_values), ("image_grid_thw", image_grid_thw),
                                   ("mm_token_type_ids", mm_types)) if v is not None}
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                              **extra, **kwargs)
    from transformers import StaticCache

    if per_prompt_prefill is None:  # padding that a batched prefill would compute for nothing
        real = int(attention_mask[starts].sum())
        per_prompt_prefill = len(starts) > 1 and real < 0.75 * len(starts) * input_ids.shape[1]
    cache = _prefill(model, input_ids, attention_mask, starts, row_pixels, row_grids, mm_types, per_prompt_prefill)
    holders = _rope_holders(model)
    # one prefill per unique prompt -> its run of rows
    if len(set(counts)) == 1:
        cache.batch_repeat_interleave(counts[0])
    else:
        cache.batch_select_indices(torch.repeat_interleave(torch.arange(len(starts), device=input_ids.device),
                                                           torch.tensor(counts, device=input_ids.device)))
    expand = torch.repeat_interleave(torch.arange(len(starts), device=input_ids.device),
                                     torch.tensor(counts, device=input_ids.device))
    for m in holders:
        if m.rope_deltas is not None:
            m.rope_deltas = m.rope_deltas[expand]
    gc = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    gc.cache_implementation = None  # we hand generate its cache
    if static:
        max_new = kwargs.get("max_new_tokens", gc.max_new_tokens)
        static_cache = StaticCache(config=config.get_text_config(decoder=True),
                                   max_cache_len=input_ids.shape[1] + int(max_new))
        for layer, dyn in zip(static_cache.layers, cache.layers):
            layer.update(dyn.keys, dyn.values)
        cache = static_cache
        gc.disable_compile = False  # generate compiles decoding for a static cache on CUDA
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                          generation_config=gc, **kwargs)


class use_fast_rollouts:
    """Context manager: `model.generate` goes through `shared_prefill_generate` while inside (what the RL trainer
    uses around its generation step when `fast_rollouts=True`)."""

    def __init__(self, model, static: bool | None = None):
        self.model, self.static = model, static

    def __enter__(self):
        original = self.model.generate
        static = self.static

        class _Bound:  # generate(...) on the instance -> the shared-prefill path, calling the class's generate
            def __call__(_, *args, **kw):
                if args:
                    kw["input_ids"] = args[0]
                return shared_prefill_generate(_Plain(self.model, original), static=static, **kw)

        self.model.generate = _Bound()
        return self.model

    def __exit__(self, *exc):
        del self.model.generate


class _Plain:
    """The model with its original `generate` (so the patched instance does not recurse)."""

    def __init__(self, model, generate):
        self._model, self.generate = model, generate

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kw):
        return self._model(*args, **kw)


__all__ = ["shared_prefill_generate", "prompt_groups", "use_fast_rollouts", "decode_attention",
           "grouped_decode_attention"]
