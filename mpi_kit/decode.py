"""A decode loop whose cost is the model's arithmetic: `decode_generate`, a drop-in for `model.generate` on Qwen2.5-VL.

Each unique prompt is prefilled once (its run of G or 2G identical rows shares it); the loop then decodes all rows
together in a cache allocated once per call: the prompt keys/values stay one copy per prompt, and a group's rows
read it in one matmul, while each row's new keys/values go into a preallocated slot per step. No masks, position
ids or caches are rebuilt per step: the rotary angles of every step are computed up front from the prompt's
multimodal rope offset, and each step calls the model's own modules (norms, projections, MLP, LoRA adapters).

Sampling follows `generate`'s recipe (min_new_tokens, suppress_tokens, temperature, top_k, top_p, finished rows
padded) and draws from the same distribution, by inverse CDF (one uniform per row: the same seed gives the same
bytes, but not `generate`'s tokens, which draw one number per vocabulary entry); greedy is argmax.
Anything else (beam search, repetition penalty, another architecture) falls back to `mpi_kit.rollout`'s path.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import typing

import torch

from .rollout import _split_images, prompt_groups, shared_prefill_generate

SUPPORTED_MODELS = ("qwen2_5_vl",)
# generation settings the loop implements; any other non-default one sends the call to the fallback
_DEFAULTS = {"num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "min_p": None,
             "no_repeat_ngram_size": 0, "bad_words_ids": None, "begin_suppress_tokens": None,
             "forced_bos_token_id": None, "forced_eos_token_id": None, "stop_strings": None, "max_time": None,
             "sequence_bias": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
             "encoder_repetition_penalty": 1.0, "length_penalty": 1.0, "guidance_scale": None,
             "output_scores": False, "output_logits": False, "return_dict_in_generate": False,
             "assistant_model": None, "prompt_lookup_num_tokens": None, "diversity_penalty": 0.0,
             "renormalize_logits": False, "exponential_decay_length_penalty": None, "top_h": None}


_INPUTS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")


def _parts(model):
    """(base model, text model, lm_head) of a Qwen2.5-VL model, under a peft wrapper or not; None if unsupported."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in SUPPORTED_MODELS:
        return None
    text = base.model.language_model
    if getattr(text.config, "use_sliding_window", False) or set(text.config.layer_types) != {"full_attention"}:
        return None
    return base, text, base.lm_head


def _settings(model, generation_config, kwargs) -> tuple:
    """(GenerationConfig with kwargs applied, kwargs it did not take)."""
    gc = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    unused = gc.update(**kwargs)
    return gc, unused


def supported(model, generation_config=None, kwargs: dict | None = None) -> bool:
    """Whether `decode_generate` runs this call itself (else it hands it to `shared_prefill_generate`)."""
    if _parts(model) is None:
        return False
    gc, unused = _settings(model, generation_config, {k: v for k, v in (kwargs or {}).items() if k not in _INPUTS})
    if unused or gc.max_new_tokens is None:
        return False
    return all(getattr(gc, k, v) in (v, None) for k, v in _DEFAULTS.items())


def _eos_ids(gc) -> list[int]:
    eos = gc.eos_token_id
    return [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


@torch.no_grad()
def decode_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                    generation_config=None, **kwargs) -> torch.Tensor:
    """`model.generate(input_ids, attention_mask, generation_config, **kwargs)`: prompt + completion ids, the same
    output layout (left-padded prompts, rows after their EOS padded, trimmed to the longest completion). Calls it
    cannot run go to `mpi_kit.rollout.shared_prefill_generate` unchanged. Sampled tokens: `generate`'s distribution
    (module docstring)."""
    if not supported(model, generation_config, kwargs):
        return shared_prefill_generate(model, input_ids, attention_mask, generation_config=generation_config,
                                       **kwargs)
    pixel_values = kwargs.pop("pixel_values", None)
    image_grid_thw = kwargs.pop("image_grid_thw", None)
    mm_types = kwargs.pop("mm_token_type_ids", None)
    gc, _ = _settings(model, generation_config, kwargs)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    base, text, head = _parts(model)
    prefill = Prefill(base, input_ids, attention_mask, pixel_values, image_grid_thw, mm_types)
    completion = DecodeLoop(text, head, prefill).run(gc)
    return torch.cat([input_ids, completion], dim=1)


class Prefill:
    """Every unique prompt run once through the model: its keys (U, Hkv, D, P) and values (U, Hkv, P, D) per layer,
    left-padded to the batch's prompt width P, the padding mask, the next-token logits and each row's first decode
    position. Rows are grouped as runs of identical prompts; with equal runs of g rows the cache is kept once per
    prompt (U prompts x g rows), otherwise expanded to one copy per row (g = 1)."""

    def __init__(self, base, input_ids, attention_mask, pixel_values, image_grid_thw, mm_types):
        from transformers import DynamicCache

        config = base.config
        B, P = input_ids.shape
        row_pixels = row_grids = None
        if pixel_values is not None:
            merge = config.vision_config.spatial_merge_size
            row_pixels, row_grids = _split_images(input_ids, pixel_values, image_grid_thw, config.image_token_id,
                                                  merge)
        starts, counts = prompt_groups(input_ids, attention_mask, row_pixels)
        real = int(attention_mask[starts].sum())
        per_prompt = len(starts) > 1 and real < 0.75 * len(starts) * P  # padding a batched prefill would compute
        chunks = [[s] for s in starts] if per_prompt else [starts]
        keys, values, logits, positions = [], [], [], []
        for rows in chunks:
            idx = torch.tensor(rows, device=input_ids.device)
            keep = attention_mask[rows[0]].bool() if per_prompt else slice(None)
            ids, mask = input_ids[idx][:, keep], attention_mask[idx][:, keep]
            inputs = {"input_ids": ids, "attention_mask": mask}
            if row_pixels is not None:
                inputs["pixel_values"] = torch.cat([row_pixels[i] for i in rows])
                inputs["image_grid_thw"] = torch.cat([row_grids[i] for i in rows])
            pos, nxt = rope_positions(base, ids, mask, inputs.get("image_grid_thw"),
                                      mm_types[idx][:, keep] if mm_types is not None else None)
            cache = DynamicCache(config=config.get_text_config(decoder=True))
            out = base(**inputs, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
            pad = P - ids.shape[1]
            keys.append([torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)) for layer in cache.layers])
            values.append([torch.nn.functional.pad(layer.values, (0, 0, pad, 0)) for layer in cache.layers])
            logits.append(out.logits[:, -1].float())
            positions.append(nxt)
        n_layers = len(keys[0])
        # keys stored transposed, (U, Hkv, D, P): q @ K^T then reads them in BLAS's preferred layout
        self.keys = [torch.cat([k[i] for k in keys]).transpose(-1, -2).contiguous() for i in range(n_layers)]
        self.values = [torch.cat([v[i] for v in values]).contiguous() for i in range(n_layers)]
        self.logits, self.positions = torch.cat(logits), torch.cat(positions)
        self.mask = attention_mask[starts].bool()
        self.group = counts[0] if len(set(counts)) == 1 else 1
        if self.group == 1 and len(starts) < B:  # unequal runs: one cache copy per row
            rows = torch.repeat_interleave(torch.arange(len(starts), device=input_ids.device),
                                           torch.tensor(counts, device=input_ids.device))
            self.keys = [k[rows] for k in self.keys]
            self.values = [v[rows] for v in self.values]
            self.logits, self.positions, self.mask = self.logits[rows], self.positions[rows], self.mask[rows]
        self.batch = B
        self.device = input_ids.device


def rope_positions(base, ids: torch.Tensor, mask: torch.Tensor, image_grid_thw=None, types=None):
    """(position ids (3, B, P), each row's first new position) of left-padded prompts: Qwen2.5-VL's multimodal
    rope index when the prompts hold images (`types`: their token types, image tokens by default), else text
    positions counted over the mask."""
    if image_grid_thw is not None:
        if types is None:
            types = (ids == base.config.image_token_id).long()
        pos, deltas = base.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=image_grid_thw,
                                                attention_mask=mask)
        return pos, mask.sum(1) + deltas.reshape(-1)  # first new token: after the prompt's last position
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)[None].expand(3, -1, -1), mask.sum(1)


class DecodeLoop:
    """Decode all rows at once from a `Prefill`: per step one token per row through the text model's own modules;
    the new keys/values go into slot t of a cache allocated once (keys (U, Hkv, g, D, T), values (U, Hkv, g, T, D))."""

    def __init__(self, text, head, prefill: Prefill):
        self.text, self.head, self.pre = text, head, prefill
        attn = text.layers[0].self_attn
        self.H, self.Hkv, self.D = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
        self.scaling = attn.scaling
        module = sys.modules[type(attn).__module__]
        self.rotate = module.apply_rotary_pos_emb
        self.fused = fused_weights(text)
        mask = prefill.mask
        self.prompt_bias = None if bool(mask.all()) else \
            torch.zeros(mask.shape, dtype=prefill.keys[0].dtype, device=mask.device).masked_fill(
                ~mask, float("-inf"))[:, None, None, :]  # (U, 1, 1, P)

    def run(self, gc) -> torch.Tensor:
        """Completion ids (B, steps) for generation config `gc`: sampled or greedy, stopped per row at EOS."""
        pre, dev = self.pre, self.pre.device
        B, g = pre.batch, pre.group
        U = B // g
        T = int(gc.max_new_tokens)
        eos = _eos_ids(gc)
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else 0)
        dtype = pre.keys[0].dtype
        self.new_keys = [torch.zeros(U, self.Hkv, g, self.D, T, dtype=dtype, device=dev) for _ in pre.keys]  # K^T
        self.new_values = [torch.zeros(U, self.Hkv, g, T, self.D, dtype=dtype, device=dev) for _ in pre.keys]
        rows = torch.arange(B, device=dev) // g
        steps = pre.positions.repeat_interleave(g) if g > 1 else pre.positions
        position_ids = (steps[:, None] + torch.arange(T, device=dev))[None].expand(3, -1, -1)
        self.cos, self.sin = self.text.rotary_emb(pre.keys[0], position_ids)  # (B, T, D): every step's angles
        logits = pre.logits[rows] if g > 1 else pre.logits
        process = LogitsRecipe(gc, eos, logits.shape[-1], dev)
        eos_t = torch.tensor(eos, device=dev, dtype=torch.long)
        out = torch.full((B, T), pad, dtype=torch.long, device=dev)
        unfinished = torch.ones(B, dtype=torch.bool, device=dev)
        n = T
        for t in range(T):
            scores = process(logits, t)
            if gc.do_sample:
                tokens = sample(scores)
            else:
                tokens = scores.argmax(-1)
            tokens = torch.where(unfinished, tokens, pad)
            out[:, t] = tokens
            if eos:
                unfinished &= ~torch.isin(tokens, eos_t)
                if not bool(unfinished.any()):
                    n = t + 1
                    break
            if t + 1 < T:
                logits = self.step(tokens, t)
        return out[:, :n]

    def step(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        """Feed token t of every row; returns the next-token logits (B, V) in fp32."""
        pre, text = self.pre, self.text
        B, g, H, Hkv, D = pre.batch, pre.group, self.H, self.Hkv, self.D
        U, r = B // g, H // Hkv
        cos, sin = self.cos[:, t], self.sin[:, t]
        x = text.embed_tokens(tokens)
        for i, layer in enumerate(text.layers):
            attn = layer.self_attn
            h = _norm(layer.input_layernorm, x)
            if self.fused is not None:  # q, k, v in one matmul
                qkv = torch.addmm(self.fused[i].qkv_bias, h, self.fused[i].qkv)
                q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], -1)
                q, k = self.rotate(q.view(B, H, D), k.view(B, Hkv, D), cos, sin, unsqueeze_dim=1)
                v = v.reshape(B, Hkv, D)
            else:
                q, k = self.rotate(attn.q_proj(h).view(B, H, D), attn.k_proj(h).view(B, Hkv, D), cos, sin,
                                   unsqueeze_dim=1)
                v = attn.v_proj(h).view(B, Hkv, D)
            nk, nv = self.new_keys[i], self.new_values[i]
            nk[..., t].copy_(k.reshape(U, g, Hkv, D).transpose(1, 2))
            nv[:, :, :, t].copy_(v.reshape(U, g, Hkv, D).transpose(1, 2))
            # (U, Hkv, g, r, D): a group's g rows x r query heads share one KV head of the shared prompt
            q = (q * self.scaling).reshape(U, g, Hkv, r, D).transpose(1, 2)
            s_prompt = torch.matmul(q.reshape(U, Hkv, g * r, D), pre.keys[i])  # (U, Hkv, g*r, P)
            if self.prompt_bias is not None:
                s_prompt.add_(self.prompt_bias)  # in place: a broadcast add into a new tensor costs several times more
            s_prompt = s_prompt.view(U, Hkv, g, r, -1)
            s_new = torch.matmul(q, nk[..., :t + 1])  # (U, Hkv, g, r, t+1)
            p = torch.cat([s_prompt, s_new], -1).softmax(-1)
            P = s_prompt.shape[-1]
            o = torch.matmul(p[..., :P].reshape(U, Hkv, g * r, P), pre.values[i]).view(U, Hkv, g, r, D)
            o = o + torch.matmul(p[..., P:], nv[:, :, :, :t + 1])
            o = o.transpose(1, 2).reshape(B, H * D)
            if self.fused is not None:  # o_proj; gate and up in one matmul; down
                w = self.fused[i]
                x = x + o @ w.o
                gate, up = (_norm(layer.post_attention_layernorm, x) @ w.gate_up).chunk(2, -1)
                x = x + (torch.nn.functional.silu(gate) * up) @ w.down
            else:
                x = x + attn.o_proj(o)
                x = x + layer.mlp(_norm(layer.post_attention_layernorm, x))
        return self.head(_norm(text.norm, x)).float()


class FusedWeights(typing.NamedTuple):
    """One layer's projections for a decode step, transposed (in, out) and concatenated: x @ W per matmul."""
    qkv: torch.Tensor
    qkv_bias: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def fused_weights(text) -> list[FusedWeights] | None:
    """Per layer, q/k/v as one (hidden, q+k+v) matrix, gate/up as one, all transposed: fewer and larger matmuls per
    decode step. Copied once per `decode_generate` call (the weights change between RL steps). None unless every
    projection is a plain `nn.Linear` (q/k/v with bias, the others without) and the MLP is SiLU-gated, as in
    Qwen2.5-VL: LoRA adapters and quantized layers run as their own modules."""
    if getattr(text.config, "hidden_act", None) != "silu":
        return None
    out = []
    for layer in text.layers:
        attn, mlp = layer.self_attn, layer.mlp
        lin = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not torch.nn.Linear for m in lin) or any(m.bias is None for m in lin[:3]) or \
                any(m.bias is not None for m in lin[3:]):
            return None
        with torch.no_grad():
            out.append(FusedWeights(
                torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).t().contiguous(),
                torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]),
                attn.o_proj.weight.t().contiguous(),
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t().contiguous(),
                mlp.down_proj.weight.t().contiguous()))
    return out


def sample(scores: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax(scores) by inverse CDF: one uniform per row (`torch.multinomial` draws one
    exponential per vocabulary entry, which costs more than the tiny model's step arithmetic). A token of zero
    probability is never drawn: the first index whose CDF exceeds u < total has mass."""
    cdf = scores.softmax(-1).cumsum(-1)
    total = cdf[:, -1:]
    u = torch.minimum(torch.rand(total.shape, device=cdf.device, dtype=cdf.dtype) * total,
                      torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def _norm(module, x):
    """The model's RMSNorm as one fused op (its weight and epsilon) in fp32; other norms and dtypes (the model
    upcasts bf16/fp16 to fp32 inside) run as themselves."""
    eps = getattr(module, "variance_epsilon", None)
    if eps is None or x.dtype != torch.float32 or type(module).__name__ not in ("Qwen2_5_VLRMSNorm", "Qwen2RMSNorm"):
        return module(x)
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), module.weight, eps)


class LogitsRecipe:
    """`generate`'s logits processing for the settings `decode_generate` supports, in its order: min_new_tokens
    and suppress_tokens (-inf), then, when sampling, temperature, top_k and top_p (the same arithmetic)."""

    def __init__(self, gc, eos: list[int], vocab: int, device):
        self.min_new = int(gc.min_new_tokens or 0)
        self.eos = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.eos[[e for e in eos if e < vocab]] = True
        self.suppress = None
        if gc.suppress_tokens:
            self.suppress = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.suppress[[s for s in gc.suppress_tokens if s < vocab]] = True
        sample = bool(gc.do_sample)
        self.temperature = float(gc.temperature) if sample and gc.temperature not in (None, 1.0) else None
        self.top_k = int(gc.top_k) if sample and gc.top_k not in (None, 0) else None
        self.top_p = float(gc.top_p) if sample and gc.top_p is not None and gc.top_p < 1.0 else None

    def __call__(self, scores: torch.Tensor, t: int) -> torch.Tensor:
        if t < self.min_new:
            scores = scores.masked_fill(self.eos, float("-inf"))
        if self.suppress is not None:
            scores = scores.masked_fill(self.suppress, float("-inf"))
        if self.temperature is not None:
            scores = scores / self.temperature
        if self.top_k is not None:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1]))[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p is not None:
            sorted_scores, order = torch.sort(scores, descending=False)
            remove = sorted_scores.softmax(-1).cumsum(-1) <= (1 - self.top_p)
            remove[..., -1:] = False
            scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        return scores


@contextlib.contextmanager
def use_decode(model, fallback: str = "shared"):
    """While inside, `model.generate(...)` runs `decode_generate`; calls it does not support run
    `shared_prefill_generate` (fallback "shared", the trainer's) or the model's own `generate` ("generate")."""
    from .rollout import _Plain

    original = model.generate

    def generate(*args, **kw):
        if args:
            kw["input_ids"] = args[0]
        ids, mask = kw.pop("input_ids"), kw.pop("attention_mask", None)
        gc = kw.pop("generation_config", None)
        if supported(model, gc, kw):
            return decode_generate(model, ids, mask, generation_config=gc, **kw)
        if fallback == "generate":
            return original(input_ids=ids, attention_mask=mask, generation_config=gc, **kw)
        return shared_prefill_generate(_Plain(model, original), ids, mask, generation_config=gc, **kw)

    model.generate = generate
    try:
        yield model
    finally:
        del model.generate


ROLLOUT_PATHS = {False: "generate", True: "decode", "generate": "generate", "decode": "decode",
                 "shared": "shared"}


def rollout_generate(model, path=True, fallback: str = "shared"):
    """Context manager: `model.generate` for the trainer's rollouts. path (its `fast_rollouts`): True or "decode" =
    `decode_generate`; "shared" = `mpi_kit.rollout`'s shared prefill + `generate` (the earlier fast path);
    False or "generate" = plain `generate` (the baselines stay selectable). fallback: see `use_decode`."""
    from .rollout import use_fast_rollouts

    if path not in ROLLOUT_PATHS:
        raise ValueError(f"fast_rollouts must be one of {sorted(map(str, ROLLOUT_PATHS))}, got {path!r}")
    name = ROLLOUT_PATHS[path]
    if name == "decode":
        return use_decode(model, fallback)
    return use_fast_rollouts(model) if name == "shared" else contextlib.nullcontext(model)


__all__ = ["rollout_generate", "ROLLOUT_PATHS", "decode_generate", "supported", "use_decode", "Prefill", "DecodeLoop",
           "LogitsRecipe", "sample", "fused_weights", "rope_positions"]
