"""The memory planner: what each stage needs at its peak, before it runs, and the micro-batch that fits a budget.

`plan(recipe, budget_gib=15, policy_tokens=2000, G=4, completion_tokens=512)` predicts the peak allocated memory of
VM-CPT, SFT, RL generation and RL update from the model's shapes, then picks, per stage, the largest per-device
micro-batch (and the gradient accumulation that keeps the recipe's effective batch) whose peak fits the budget.
Nothing fits -> `MemoryPlanError`, naming what would (a shorter policy or completion, a smaller G, a larger card).

The arithmetic, term by term (bytes; B = micro-batch, T = sequence tokens, h = hidden, I = MLP width, V = vocab):
- weights: NF4 linear layers 0.5 B/param + their quantization constants (one 8-bit absmax per 64 weights, one
  fp32 per 256 of those: double quantization); everything else in the compute dtype, or fp32 under QLoRA (peft's
  `prepare_model_for_kbit_training` upcasts every non-4-bit weight: embeddings, norms, the vision tower).
- LoRA: r * (in + out) fp32 values per wrapped linear, x4 in training (weight, gradient, AdamW's two moments).
- activations, gradient checkpointing on: every layer keeps its input (B*T*h), and backward recomputes one layer at
  a time (~ c_h*h + c_i*I values per token, counted from the tensors a decoder layer saves); off: all layers' sets.
- logits: B*T*V in fp32 for the loss (Qwen's 151,936-token vocab makes this the largest activation: 0.6 GB per
  1,000 tokens), plus log-softmax and its gradient of the same size.
- generation: the KV cache, 2 * layers * kv_heads * head_dim values per token per sequence, for prompt +
  completion, plus one prefill's transient activations.
- CUDA overhead: a fixed `CUDA_OVERHEAD_GIB` (CUDA context, cuBLAS workspaces, allocator slack) that
  `torch.cuda.max_memory_allocated` does not see; added when checking the budget, not to the predicted peak.

The predictions are checked against measurements by `benchmarks/memory_harness.py` (`measure_peak`, one synthetic
step of each stage), which tests/test_memory.py and benchmarks/bench_gpu.py run.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .stages import PHASES, STAGES as _STAGES, section_stage

GIB = 2**30
CUDA_OVERHEAD_GIB = 0.6  # CUDA context (~0.3-0.5 GiB) + cuBLAS workspace + allocator fragmentation; not allocated
# Per-token values a decoder layer holds while backward recomputes it (checkpointing) or keeps (no checkpointing),
# counted from its saved tensors: norms, q/k/v before and after rope, attention output, o_proj, gate/up/act/product,
# down, residuals, LoRA dropout copies and LoRA outputs, plus the gradients flowing through them.
C_H, C_I = 30, 8
# Per-token values of one layer's transient forward activations without autograd (generation prefill).
C_H_INFER, C_I_INFER = 12, 4
# fp32 copies of the B*T*V logits alive at the peak of the loss: logits and log-softmax, then in backward the
# log-softmax gradient while the logits' gradient is formed (2-3 at once: 2.5 on average over the measurements).
LOGIT_COPIES = 2.5
# RL update: TRL's selective log-softmax takes logsumexp one row at a time: logits + their gradient + a row's share.
LOGIT_COPIES_RL = 1.5
STAGES = PHASES  # the planner's phases: vm_cpt, sft, rl_generation, rl_update (`mpi_kit.stages`)
# phase -> the Recipe section whose batch it plans, unless a caller names one: the first registered stage's
SECTIONS = {p: next(s.section for s in _STAGES.values() if p in s.phases) for p in PHASES}
TEMPLATE_TOKENS = 24  # chat template: roles, vision start/end, newlines

# Hub configs the planner knows without a download (the shapes of the consumer recipes' models).
QWEN25_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                        spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                        fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", in_chans=3)
KNOWN_CONFIGS = {
    "Qwen/Qwen2.5-VL-3B-Instruct": dict(
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
        vision=dict(QWEN25_VL_VISION, out_hidden_size=2048), tie_word_embeddings=True),
    "Qwen/Qwen2.5-VL-7B-Instruct": dict(
        text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
        vision=dict(QWEN25_VL_VISION, out_hidden_size=3584), tie_word_embeddings=False),
}


class MemoryPlanError(ValueError):
    """No micro-batch of a stage fits the memory budget; the message says what would fit instead."""


# ------------------------------------------------------------------------------------------------ model shape

def model_config(recipe):
    """The HF config of a recipe's model: a local folder's config.json, a known hub shape, or the HF cache."""
    from pathlib import Path

    from transformers import AutoConfig, Qwen2_5_VLConfig

    if not isinstance(recipe, str) and hasattr(recipe, "model_type"):
        return recipe  # already a config
    model = recipe if isinstance(recipe, str) else recipe.model
    if (Path(model) / "config.json").exists():
        return AutoConfig.from_pretrained(model)
    if model in KNOWN_CONFIGS:
        k = KNOWN_CONFIGS[model]
        return Qwen2_5_VLConfig(text_config=k["text"], vision_config=k["vision"],
                                tie_word_embeddings=k["tie_word_embeddings"])
    return AutoConfig.from_pretrained(model)


@dataclass
class Shape:
    """Sizes the arithmetic needs, counted on the model built on the meta device (no memory, exact counts)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vit_hidden: int
    vit_intermediate: int
    vit_depth: int
    merge: int
    quantizable: int  # weights of the language model's linear layers (NF4 under QLoRA)
    other: int  # every other weight: embeddings, norms, biases, vision tower, lm_head if untied
    lora_in_out: int  # sum of (in + out) over the LoRA-wrapped linear layers: LoRA params = r * this


_SHAPES: dict = {}


def model_shape(config) -> Shape:
    """The Shape of a config (cached: building even a 3B model on the meta device takes seconds)."""
    key = config.to_json_string()
    if key not in _SHAPES:
        _SHAPES[key] = _model_shape(config)
    return _SHAPES[key]


def _model_shape(config) -> Shape:
    import torch
    from transformers import AutoModelForImageTextToText

    from .models import VISION_RE
    import re

    with torch.device("meta"):
        m = AutoModelForImageTextToText.from_config(config)
    vision = re.compile(VISION_RE + r"(\.|$)")
    quant = in_out = 0
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and not vision.match(name) and not name.endswith("lm_head"):
            quant += mod.weight.numel()
            in_out += mod.in_features + mod.out_features
    total = sum(p.numel() for p in m.parameters())  # tied weights counted once
    t, v = config.get_text_config(), config.vision_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return Shape(t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
                 t.num_key_value_heads, head_dim, t.vocab_size, v.hidden_size, v.intermediate_size,
                 getattr(v, "depth", getattr(v, "num_hidden_layers", 0)), v.spatial_merge_size, quant,
                 total - quant, in_out)


def image_tokens(recipe) -> int:
    """Image tokens of one render_size image after the processor's resize (Qwen: (patch * merge) px per token)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    factor = 32 if "qwen3" in recipe.model.lower() else 28
    w, h = recipe.render_size
    rh, rw = smart_resize(h, w, factor=factor, min_pixels=recipe.min_pixels, max_pixels=recipe.max_pixels)
    return (rh // factor) * (rw // factor)


# ------------------------------------------------------------------------------------------------ the estimate

@dataclass
class Precision:
    weights_nf4: bool  # language-model linear layers in NF4
    other_bytes: int  # bytes per non-NF4 weight (4 under QLoRA: peft upcasts them)
    act_bytes: int  # bytes per activation value
    lora_r: int  # 0 = full fine-tune
    checkpointing: bool

    @classmethod
    def of(cls, recipe) -> "Precision":
        b = 4 if recipe.precision == "fp32" else 2  # 'auto' (the GPU recipes) is fp16 or bf16 on a GPU: 2 bytes
        nf4 = recipe.quantization == "nf4"
        return cls(nf4, 4 if nf4 and recipe.lora.enabled else b, 4 if nf4 else b,
                   recipe.lora.r if recipe.lora.enabled else 0, recipe.gradient_checkpointing)


def weight_bytes(s: Shape, p: Precision) -> float:
    """NF4: 0.5 B/weight + 1/64 B (8-bit absmax per 64-block) + 4/(64*256) B (fp32 absmax per 256 blocks)."""
    q = s.quantizable * (0.5 + 1 / 64 + 4 / (64 * 256)) if p.weights_nf4 else s.quantizable * p.other_bytes
    return q + s.other * p.other_bytes


def train_state_bytes(s: Shape, p: Precision) -> float:
    """Trainable values x 16 B (fp32 weight-copy-free LoRA: gradient 4 + AdamW m 4 + v 4, plus LoRA weights 4);
    full fine-tune: gradient + two AdamW moments in fp32 on top of the weights."""
    if p.lora_r:
        return p.lora_r * s.lora_in_out * 16
    return (s.quantizable + s.other) * 12


def _vision_transient(s: Shape, n_images_tokens: int, b: int) -> float:
    """One ViT block's working set over the patches (merge^2 per image token), no autograd (frozen tower)."""
    patches = n_images_tokens * s.merge ** 2
    return patches * (8 * s.vit_hidden + 3 * s.vit_intermediate) * b


def train_step_bytes(s: Shape, p: Precision, batch: int, tokens: int, logit_tokens: int | None = None,
                     n_image_tokens: int = 0, logit_copies: float = LOGIT_COPIES) -> dict:
    """Peak of one training micro-step: weights + trainable state + activations + logits, as a dict of terms."""
    a = p.act_bytes
    bt = batch * tokens
    layer = (C_H * s.hidden + C_I * s.intermediate) * a
    if p.checkpointing:
        acts = bt * s.hidden * a * s.layers + bt * layer
    else:
        acts = bt * layer * s.layers
    lt = batch * (tokens if logit_tokens is None else logit_tokens)
    return {"weights": weight_bytes(s, p), "train_state": train_state_bytes(s, p), "activations": acts,
            "logits": lt * s.vocab * 4 * logit_copies,
            "vision": _vision_transient(s, batch * n_image_tokens, a)}


def generation_bytes(s: Shape, p: Precision, sequences: int, prompts: int, prompt_tokens: int,
                     completion_tokens: int, n_image_tokens: int) -> dict:
    """Peak of `generate`: weights + the KV cache of every sequence (2 * layers * kv_heads * head_dim values per
    token) + one prefill's layer activations and its vision tower pass (the prompts, once each when shared)."""
    a = p.act_bytes
    kv = sequences * (prompt_tokens + completion_tokens) * 2 * s.layers * s.kv_heads * s.head_dim * a
    prefill = prompts * prompt_tokens * (C_H_INFER * s.hidden + C_I_INFER * s.intermediate) * a
    return {"weights": weight_bytes(s, p), "train_state": train_state_bytes(s, p) / 4 if p.lora_r else 0,
            "kv_cache": kv, "activations": prefill, "logits": sequences * s.vocab * 4 * 2,
            "vision": _vision_transient(s, prompts * n_image_tokens, a)}


# ------------------------------------------------------------------------------------------------ the plan

@dataclass
class Workload:
    """What the plan must fit: lengths in tokens (policy: the longest policy document; image: one scene image)."""

    policy_tokens: int = 2000
    image_tokens: int = 204
    query_tokens: int = 100
    completion_tokens: int = 512
    G: int = 4
    policy_rollout: bool = True

    def sequence(self, stage: str) -> int:
        base = self.image_tokens + self.query_tokens + TEMPLATE_TOKENS
        if stage == "vm_cpt":
            return base + self.policy_tokens + self.completion_tokens
        if stage in ("sft", "rl_update"):
            return base + self.completion_tokens
        return base  # rl_generation prompt without the policy


@dataclass
class StagePlan:
    stage: str
    micro_batch: int
    accumulation: int
    effective: int
    tokens: int
    peak_gib: float
    terms: dict = field(default_factory=dict)

    @property
    def needs_gib(self) -> float:
        return self.peak_gib + CUDA_OVERHEAD_GIB


@dataclass
class Plan:
    """A stage-by-stage plan: micro-batch x accumulation, sequence length and predicted peak. `str(plan)` is a
    table for notebooks; `plan.stages["sft"].micro_batch` etc. for code."""

    recipe: str
    budget_gib: float | None
    workload: Workload
    stages: dict

    def __str__(self) -> str:
        w = self.workload
        budget = (f"budget {self.budget_gib} GiB (peak + {CUDA_OVERHEAD_GIB} GiB CUDA overhead must fit)"
                  if self.budget_gib else "no budget (memory_budget_gib=0): predicted peaks only, the recipe's "
                                          "micro-batches as written")
        head = (f"memory plan for {self.recipe}: {budget}; policy {w.policy_tokens} tok, image "
                f"{w.image_tokens} tok, completion {w.completion_tokens} tok, G={w.G}"
                f"{' (+G policy-aware)' if w.policy_rollout else ''}")
        rows = [f"{'stage':<14}{'micro x accum':>14}{'tokens':>8}{'peak GiB':>10}   biggest terms (GiB)"]
        for sp in self.stages.values():
            big = sorted(sp.terms.items(), key=lambda kv: -kv[1])[:3]
            rows.append(f"{sp.stage:<14}{f'{sp.micro_batch} x {sp.accumulation}':>14}{sp.tokens:>8}"
                        f"{sp.peak_gib:>10.2f}   " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in big))
        return "\n".join([head] + rows)

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731


def predict(recipe, stage: str, micro_batch: int, workload: Workload, shape: Shape | None = None,
            generation_batch: int | None = None, shared_prefill: bool = False) -> dict:
    """Predicted peak terms (bytes) of one stage at this micro-batch (rl_generation: `generation_batch`
    completions, default micro_batch; PolicyRollout generates its two halves one after the other)."""
    s = shape or model_shape(model_config(recipe))
    p = Precision.of(recipe)
    n_img = workload.image_tokens
    if stage in ("vm_cpt", "sft"):
        return train_step_bytes(s, p, micro_batch, workload.sequence(stage), n_image_tokens=n_img)
    if stage == "rl_update":
        return train_step_bytes(s, p, micro_batch, workload.sequence(stage),
                                logit_tokens=workload.completion_tokens + 1, n_image_tokens=n_img,
                                logit_copies=LOGIT_COPIES_RL)
    n = generation_batch or micro_batch
    G = 2 * workload.G if workload.policy_rollout else workload.G
    prompts = max(1, n // G)  # unique prompts: prefilled once each when shared, else once per sequence
    halves = [(n, workload.sequence("rl_generation"))]
    if workload.policy_rollout:  # no-policy half, then the policy-aware half with the longer prompt
        halves = [(n // 2, workload.sequence("rl_generation")),
                  (n // 2, workload.sequence("rl_generation") + workload.policy_tokens)]
    best = None
    for seqs, prompt in halves:
        t = generation_bytes(s, p, seqs, prompts if shared_prefill else seqs, prompt, workload.completion_tokens,
                             n_img)
        if best is None or sum(t.values()) > sum(best.values()):
            best = t
    return best


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan(recipe, budget_gib: float | None = None, *, policy_tokens: int = 2000, G: int | None = None,
         completion_tokens: int | None = None, image_tokens_: int | None = None, query_tokens: int = 100,
         policy_rollout: bool = True, stages=STAGES, sections: dict | None = None) -> Plan:
    """Plan each stage: the largest micro-batch dividing the recipe's effective batch whose predicted peak plus
    `CUDA_OVERHEAD_GIB` fits `budget_gib` (None: the recipe's `memory_budget_gib`, 0 = no limit, keep the recipe's
    split). RL generation must fit its whole generation batch (TRL generates a step's completions at once).
    `sections` maps a phase to the Recipe section it plans (default `SECTIONS`: sft -> sft_cot, rl -> grpo)."""
    from .models import as_recipe

    recipe = as_recipe(recipe)
    budget = recipe.memory_budget_gib if budget_gib is None else budget_gib
    rl = recipe.grpo
    w = Workload(policy_tokens, image_tokens_ if image_tokens_ is not None else image_tokens(recipe), query_tokens,
                 completion_tokens or rl.max_completion_length, G or rl.num_generations, policy_rollout)
    shape = model_shape(model_config(recipe))
    out = {}
    for stage in stages:
        st = getattr(recipe, {**SECTIONS, **(sections or {})}[stage])
        eff = st.per_device_train_batch_size * st.gradient_accumulation_steps
        if stage == "rl_generation":
            terms = predict(recipe, stage, eff, w, shape, generation_batch=eff)
            sp = StagePlan(stage, eff, 1, eff, w.sequence(stage) + w.completion_tokens, sum(terms.values()) / GIB,
                           terms)
            if budget and sp.needs_gib > budget:
                raise MemoryPlanError(_refusal(recipe, stage, w, budget, sp, shape, eff))
            out[stage] = sp
            continue
        candidates = _divisors(eff) if budget else [st.per_device_train_batch_size]
        chosen = None
        for mb in candidates:
            terms = predict(recipe, stage, mb, w, shape)
            sp = StagePlan(stage, mb, eff // mb, eff, w.sequence(stage), sum(terms.values()) / GIB, terms)
            if not budget or sp.needs_gib <= budget:
                chosen = sp
                break
        if chosen is None:
            raise MemoryPlanError(_refusal(recipe, stage, w, budget, sp, shape, eff))
        out[stage] = chosen
    return Plan(recipe.name, budget or None, w, out)


def longest_policy_tokens(recipe, data_dir) -> int:
    """Tokens of the longest policy document in a data folder (`mpi-kit data`), by the recipe's tokenizer: the
    `policy_tokens` to plan VM-CPT and PolicyRollout's policy-aware rollouts with (policy images not counted)."""
    from transformers import AutoTokenizer

    from .models import as_recipe
    from .tasks import task_of

    tok = AutoTokenizer.from_pretrained(as_recipe(recipe).model)
    return max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in task_of(data_dir).policy_texts(data_dir))


def _fits(recipe, stage, w, shape, budget, n) -> bool:
    mb = n if stage == "rl_generation" else 1
    return sum(predict(recipe, stage, mb, w, shape, generation_batch=n).values()) / GIB + CUDA_OVERHEAD_GIB <= budget


def _refusal(recipe, stage, w: Workload, budget, sp: StagePlan, shape, eff) -> str:
    """What would fit instead: the longest policy / completion, the largest G, or the card it needs."""
    fixes = []

    def longest(attr, lo=16):
        best, hi = None, getattr(w, attr)
        while lo <= hi:
            mid = (lo + hi) // 2
            if _fits(recipe, stage, dataclasses.replace(w, **{attr: mid}), shape, budget, eff):
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best

    if stage == "vm_cpt" and (n := longest("policy_tokens")):
        fixes.append(f"a policy of at most {n} tokens (now {w.policy_tokens})")
    if (n := longest("completion_tokens")):
        fixes.append(f"max_completion_length <= {n} (now {w.completion_tokens})")
    if stage == "rl_generation":
        per_group = 2 * w.G if w.policy_rollout else w.G
        for g in range(w.G - 1, 0, -1):
            n = eff // per_group * (2 * g if w.policy_rollout else g)
            if n and _fits(recipe, stage, dataclasses.replace(w, G=g), shape, budget, n):
                fixes.append(f"G={g} (now {w.G}; {n} completions per generation)")
                break
    fixes.append(f"a card with >= {math.ceil(sp.needs_gib)} GiB (set memory_budget_gib)")
    where = "micro-batch 1" if stage != "rl_generation" else f"a generation batch of {eff} completions"
    return (f"{stage} does not fit in {budget} GiB: at {where} and {sp.tokens} tokens it needs ~{sp.needs_gib:.1f} "
            f"GiB (peak {sp.peak_gib:.1f} + {CUDA_OVERHEAD_GIB} CUDA overhead). What would fit instead: "
            + "; or ".join(fixes) + ".")


def apply_plan(recipe, section: str, kwargs: dict, **workload) -> dict:
    """Trainer keywords with the plan's micro-batch and accumulation for the stage whose hyperparameters are
    Recipe section `section` ('vm_cpt', 'sft_cot', 'grpo', ...) when the recipe has a `memory_budget_gib`;
    unchanged otherwise. Raises MemoryPlanError when nothing fits."""
    if not getattr(recipe, "memory_budget_gib", 0):
        return kwargs
    stage = section_stage(section)
    names = stage.phases
    p = plan(recipe, stages=names, sections={n: section for n in names}, **workload)
    sp = p.stages[names[-1]]
    out = dict(kwargs, per_device_train_batch_size=sp.micro_batch, gradient_accumulation_steps=sp.accumulation)
    if stage.kind == "rl":  # one generation per optimizer step, as before: the generation batch stays the same
        out["steps_per_generation"] = sp.accumulation
    print(p)
    return out


__all__ = ["MemoryPlanError", "Plan", "StagePlan", "Workload", "plan", "predict", "apply_plan", "model_config",
           "longest_policy_tokens", "model_shape", "image_tokens", "CUDA_OVERHEAD_GIB", "KNOWN_CONFIGS"]
