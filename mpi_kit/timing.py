"""How long a stage will take, before it runs: FLOPs and bytes per step over the card's throughput.

An estimate, not a measurement. A training token costs ~2 FLOPs per matmul weight forward; backward costs 2 more
for the activations (frozen LoRA base: no weight gradients) or 4 (full fine-tune); gradient checkpointing
recomputes the forward (+2). Compute time = FLOPs / (card peak x `ACHIEVED_FRACTION`). NF4 weights add memory
traffic: bitsandbytes dequantizes each 4-bit matrix to the compute dtype on every pass. Generation decodes one
token per step for the whole batch: a step reads every weight and the KV cache once, so it costs the larger of
bytes / bandwidth, FLOPs / peak and the kernel-launch floor of eager PyTorch.

`estimate_stage(recipe, "sft", steps=24, tokens=..., gpu="T4")` prices one stage; the stages print it themselves
before training on a GPU (`stage_facts`), and write it to summary.json as `time_estimate`.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Card:
    """A GPU's datasheet peaks: dense tensor-core TFLOPS per dtype (no sparsity) and memory bandwidth (GB/s)."""

    name: str
    fp16_tflops: float  # fp16 inputs, fp32 accumulate (what mixed-precision training uses)
    bf16_tflops: float  # pre-Ampere (T4, V100) has no bf16 tensor cores: its FP32 CUDA-core rate, at best
    fp32_tflops: float  # FP32 CUDA cores (torch leaves TF32 matmuls off by default)
    bandwidth_gbs: float
    capability: tuple[int, int]  # CUDA compute capability: what `precision="auto"` resolves by
    source: str

    def tflops(self, precision: str) -> float:
        return {"fp16": self.fp16_tflops, "bf16": self.bf16_tflops, "fp32": self.fp32_tflops}[precision]


# Datasheet numbers (NVIDIA product pages / architecture whitepapers), dense, boost clock. The regex matches
# torch.cuda.get_device_name(), e.g. "Tesla T4", "NVIDIA A100-SXM4-40GB", "NVIDIA GeForce RTX 4090".
CARDS = {
    r"\bT4\b": Card("T4", 65.0, 8.1, 8.1, 320, (7, 5),
                    "NVIDIA T4 datasheet: 65 TFLOPS FP16 tensor (mixed precision), 8.1 TFLOPS FP32, 320 GB/s"),
    r"V100": Card("V100", 125.0, 15.7, 15.7, 900, (7, 0),
                  "NVIDIA V100 SXM2 datasheet: 125 TFLOPS tensor, 15.7 TFLOPS FP32, 900 GB/s"),
    r"\bL4\b": Card("L4", 121.0, 121.0, 30.3, 300, (8, 9),
                    "NVIDIA L4 datasheet: 242 TFLOPS FP16/BF16 with sparsity (121 dense), 30.3 TFLOPS FP32, 300 GB/s"),
    r"\bA10\b": Card("A10", 125.0, 125.0, 31.2, 600, (8, 6),
                     "NVIDIA A10 datasheet: 250 TFLOPS BF16 with sparsity (125 dense), 31.2 TFLOPS FP32, 600 GB/s"),
    r"A100": Card("A100", 312.0, 312.0, 19.5, 1555, (8, 0),
                  "NVIDIA A100 datasheet (40 GB): 312 TFLOPS BF16/FP16 dense, 19.5 TFLOPS FP32, 1,555 GB/s"),
    r"H100": Card("H100", 989.0, 989.0, 67.0, 3350, (9, 0),
                  "NVIDIA H100 SXM datasheet: 1,979 TFLOPS BF16 with sparsity (989 dense), 67 TFLOPS FP32, 3.35 TB/s"),
    r"H200": Card("H200", 989.0, 989.0, 67.0, 4800, (9, 0),
                  "NVIDIA H200 SXM datasheet: 1,979 TFLOPS BF16 with sparsity (989 dense), 4.8 TB/s"),
    r"RTX 3090": Card("RTX 3090", 71.0, 71.0, 35.6, 936, (8, 6),
                      "NVIDIA GA102 whitepaper: 71 TFLOPS FP16 tensor with FP32 accumulate, 35.6 FP32, 936 GB/s"),
    r"RTX 4090": Card("RTX 4090", 165.2, 165.2, 82.6, 1008, (8, 9),
                      "NVIDIA Ada whitepaper: 165.2 TFLOPS FP16 tensor with FP32 accumulate, 82.6 FP32, 1,008 GB/s"),
}
# Share of the datasheet matmul peak a QLoRA training step achieves end to end. An assumption, not a measurement
# (no GPU was at hand while this was written): the datasheet peak is at boost clock, which a power-capped 70 W T4
# does not hold under sustained load; a step adds work that runs far below peak (norms, rope, softmax, LoRA's
# rank-16 matmuls, small micro-batches); and well-tuned dense bf16 training is commonly quoted at 30-50% model-FLOPs
# utilisation, which 4-bit QLoRA on one card is unlikely to beat. So 0.3, the low end of that range.
# benchmarks/bench_gpu.py measures the steps this should be replaced with.
ACHIEVED_FRACTION = 0.3
# Share of peak bandwidth that streaming reads/writes reach (copy kernels typically reach 70-85%): an assumption.
BANDWIDTH_FRACTION = 0.7
# Eager decoding launches every kernel from Python. Assumed, not counted on a GPU: ~60 kernels per decoder layer
# (7 NF4 + LoRA linears at ~6 kernels each, plus norms, rope, attention, residuals) at ~10 us each of Python and
# launch overhead on Colab's 2 vCPUs. A decode step cannot be faster than layers x KERNELS_PER_LAYER x LAUNCH_S.
KERNELS_PER_LAYER, LAUNCH_S = 60, 10e-6
# bitsandbytes' NF4 matmul for more than one input row (training, prefill, batched decoding): read 0.5 B/weight,
# write the dequantized 2-byte matrix, read it back in the matmul (bitsandbytes' `MatMul4Bit`). One decode row
# (batch 1) uses the fused 4-bit kernel instead: 0.5 B/weight.
NF4_DEQUANT_BYTES, NF4_GEMV_BYTES = 0.5 + 2 + 2, 0.5


class UnknownCardError(LookupError):
    """No datasheet numbers for this GPU; the message lists the known cards and how to pass one."""


def card(name: str | None = None) -> Card:
    """The Card for a GPU name ("T4", "Tesla T4", "NVIDIA A100-SXM4-40GB"), or for the visible GPU when None."""
    if name is None:
        import torch

        if not torch.cuda.is_available():
            raise UnknownCardError("no CUDA GPU is visible: pass gpu='T4' (or another card) to estimate for one")
        name = torch.cuda.get_device_name(0)
    for pattern, c in CARDS.items():
        if re.search(pattern, name, re.IGNORECASE):
            return c
    raise UnknownCardError(f"no datasheet numbers for GPU {name!r}; known: "
                           f"{', '.join(c.name for c in CARDS.values())}. Pass gpu=<one of them> for a similar card, "
                           f"or add a Card to mpi_kit.timing.CARDS")


def approx_tokens(text: str) -> int:
    """An estimate of Qwen's token count for the kit's templated English, with no tokenizer at hand: the pieces
    of Qwen2's pre-tokenizer (each digit alone, each word with its leading space one token). At run time the
    stages count with the real tokenizer instead."""
    return len(re.findall(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+", text))


# ------------------------------------------------------------------------------------------------ the arithmetic

@dataclass
class Cost:
    """One model's per-token costs: matmul weights in the language model (+ lm_head), in the vision tower, and the
    bytes a decode step reads besides the NF4 weights."""

    lm_params: float  # language-model linear weights + LoRA (FLOPs 2 x this per token)
    head_params: float  # lm_head (vocab x hidden): every token in training, one per sequence in prefill
    vit_params: float  # vision blocks + merger, per patch (frozen: forward only)
    nf4_params: float  # weights stored in NF4 (0 when not quantized)
    dense_bytes: float  # bytes of non-NF4 weights a decode step reads (lm_head, or every weight unquantized)
    layers: int
    attn_width: int  # heads x head_dim
    kv_bytes: float  # KV cache bytes per token per sequence
    patches_per_image_token: int
    lora: bool
    checkpointing: bool

    @classmethod
    def of(cls, recipe) -> "Cost":
        from .memory import Precision, model_config, model_shape

        s, p = model_shape(model_config(recipe)), Precision.of(recipe)
        lora = s.lora_in_out * recipe.lora.r if recipe.lora.enabled else 0
        vit = s.vit_depth * (4 * s.vit_hidden ** 2 + 3 * s.vit_hidden * s.vit_intermediate)
        vit += (s.vit_hidden * s.merge ** 2) ** 2 + s.vit_hidden * s.merge ** 2 * s.hidden  # the patch merger
        head = s.vocab * s.hidden
        nf4 = s.quantizable if p.weights_nf4 else 0
        dense = head * p.other_bytes + (0 if p.weights_nf4 else s.quantizable * p.other_bytes)
        return cls(s.quantizable + lora, head, vit, nf4, dense, s.layers, s.heads * s.head_dim,
                   2 * s.layers * s.kv_heads * s.head_dim * p.act_bytes, s.merge ** 2, recipe.lora.enabled,
                   recipe.gradient_checkpointing)

    def forward_flops(self, seqs: int, tokens: int, loss_tokens: int | None = None) -> float:
        """Language-model FLOPs of one forward over `seqs` sequences of `tokens` (logits for `loss_tokens`)."""
        lt = tokens if loss_tokens is None else loss_tokens
        attn = 2 * tokens ** 2 * self.attn_width * self.layers  # causal QK^T + AV: half of the full T x T
        return seqs * (2 * (self.lm_params * tokens + self.head_params * lt) + attn)

    def vision_flops(self, seqs: int, image_tokens: int) -> float:
        return seqs * 2 * self.vit_params * image_tokens * self.patches_per_image_token

    def train_flops(self, seqs: int, tokens: int, loss_tokens: int | None = None, image_tokens: int = 0) -> float:
        """FLOPs of forward + backward (+ recompute) over `seqs` sequences; the frozen vision tower forward only."""
        passes = 1 + (1 if self.lora else 2) + (1 if self.checkpointing else 0)  # in units of one forward
        return passes * self.forward_flops(seqs, tokens, loss_tokens) + self.vision_flops(seqs, image_tokens)

    def nf4_passes_bytes(self, passes: int) -> float:
        return passes * self.nf4_params * NF4_DEQUANT_BYTES


def resolve_card_precision(precision: str, c: Card) -> str:
    """'auto' as `models.resolve_precision` would resolve it on this card (by its compute capability)."""
    from .models import resolve_precision

    return resolve_precision(precision, capability=c.capability)


def _compute_s(flops: float, c: Card, precision: str) -> float:
    return flops / (c.tflops(precision) * 1e12 * ACHIEVED_FRACTION)


def _bytes_s(nbytes: float, c: Card) -> float:
    return nbytes / (c.bandwidth_gbs * 1e9 * BANDWIDTH_FRACTION)


def train_step_seconds(cost: Cost, c: Card, precision: str, micro_batch: int, accumulation: int, tokens: int,
                       loss_tokens: int | None = None, image_tokens: int = 0) -> float:
    """One optimizer step: `accumulation` micro-steps of `micro_batch` sequences; each micro-step's matmul time
    plus its NF4 dequantization traffic (forward, backward and, with checkpointing, the recomputed forward)."""
    micro = _compute_s(cost.train_flops(micro_batch, tokens, loss_tokens, image_tokens), c, precision)
    micro += _bytes_s(cost.nf4_passes_bytes(3 if cost.checkpointing else 2), c)
    return accumulation * micro


def generation_seconds(cost: Cost, c: Card, precision: str, sequences: int, prompt_tokens: int, new_tokens: int,
                       image_tokens: int = 0, batch_size: int | None = None) -> float:
    """`sequences` completions of `new_tokens` (the cap: a batch decodes until its longest stops), in batches of
    `batch_size` (None: all at once): a prefill, then one decode step per new token."""
    total, left = 0.0, sequences
    while left > 0:
        b = min(left, batch_size or sequences)
        left -= b
        flops = cost.forward_flops(b, prompt_tokens, 1) + cost.vision_flops(b, image_tokens)
        total += _compute_s(flops, c, precision) + _bytes_s(cost.nf4_passes_bytes(1), c)
        per_weight = NF4_GEMV_BYTES if b == 1 else NF4_DEQUANT_BYTES
        ctx = prompt_tokens + new_tokens / 2  # mean context over the decode
        step_bytes = cost.nf4_params * per_weight + cost.dense_bytes + b * ctx * cost.kv_bytes
        step_flops = 2 * b * (cost.lm_params + cost.head_params + 2 * ctx * cost.attn_width * cost.layers)
        floor = cost.layers * KERNELS_PER_LAYER * LAUNCH_S
        total += new_tokens * max(_bytes_s(step_bytes, c), _compute_s(step_flops, c, precision), floor)
    return total


# ------------------------------------------------------------------------------------------------ per stage

@dataclass
class StageEstimate:
    """A stage's estimated wall time on a card, and what it was computed from (`str()` is the line stages print)."""

    stage: str
    card: str
    precision: str
    steps: int
    step_seconds: float
    seconds: float
    tokens_per_step: int
    tflop_per_step: float

    def __str__(self) -> str:
        return (f"time estimate for {self.stage} on a {self.card} ({self.precision}): {self.steps} steps x "
                f"{fmt_seconds(self.step_seconds)} = {fmt_seconds(self.seconds)} ({self.tokens_per_step:,} tokens, "
                f"{self.tflop_per_step:,.0f} TFLOP per step; an estimate from datasheet peaks x "
                f"{ACHIEVED_FRACTION} achieved, not a measurement)")

    def to_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


def fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def estimate_stage(recipe, stage: str, steps: int, *, tokens: int, gpu: str | Card | None = None,
                   precision: str | None = None, micro_batch: int | None = None, accumulation: int | None = None,
                   image_tokens: int | None = None, completion_tokens: int | None = None,
                   policy_tokens: int = 0, prompt_tokens: int | None = None,
                   policy_rollout: bool = False) -> StageEstimate:
    """Estimated wall time of `steps` optimizer steps of a stage ('vm_cpt', 'sft_cot', 'sft_direct', 'grpo',
    'dapo'). tokens: one training sequence (RL: prompt + completion, no policy). RL adds the generation of the
    step's completions (prompt_tokens long, + policy_tokens for PoRo's policy-aware half) and, with beta > 0, a
    reference forward. precision None: the recipe's, 'auto' resolved for the card."""
    from .models import as_recipe

    recipe = as_recipe(recipe)
    c = gpu if isinstance(gpu, Card) else card(gpu)
    precision = resolve_card_precision(precision or recipe.precision, c)
    st = getattr(recipe, stage)
    mb = micro_batch or st.per_device_train_batch_size
    acc = accumulation or st.gradient_accumulation_steps
    if image_tokens is None:
        from .memory import image_tokens as recipe_image_tokens
        image_tokens = recipe_image_tokens(recipe)
    cost = Cost.of(recipe)
    rl = stage in ("grpo", "dapo")
    loss = (completion_tokens or st.max_completion_length) + 1 if rl else None
    step = train_step_seconds(cost, c, precision, mb, acc, tokens, loss, image_tokens)
    flops = cost.train_flops(mb * acc, tokens, loss, image_tokens)
    if rl:
        n, new = mb * acc, completion_tokens or st.max_completion_length
        prompt = prompt_tokens if prompt_tokens is not None else max(1, tokens - new)
        if st.beta > 0:  # the reference model's log-probs: one more forward (with LoRA, the adapter switched off)
            ref = cost.forward_flops(n, tokens, loss) + cost.vision_flops(n, image_tokens)
            flops += ref
            step += _compute_s(ref, c, precision) + _bytes_s(cost.nf4_passes_bytes(acc), c)
        # PoRo's one generate call pads every prompt of the step to the policy-aware length
        step += generation_seconds(cost, c, precision, n, prompt + (policy_tokens if policy_rollout else 0), new,
                                   image_tokens)
    return StageEstimate(stage, c.name, precision, int(steps), step, step * steps, int(mb * acc * tokens),
                         flops / 1e12)


# ------------------------------------------------------------------------------------------------ at run time

def _row_tokens(tok, messages, n_image_tokens: int) -> int:
    from .data import message_text

    text = message_text(messages)
    images = sum(p.get("type") == "image" for m in messages for p in m["content"])
    return len(tok(text, add_special_tokens=False)["input_ids"]) + images * n_image_tokens


def stage_facts(stage: str, recipe, args, ds, processor, *, policy_rollout: bool = False, sample: int = 32) -> dict:
    """What a stage adds to its summary.json before training: the resolved `precision`, and on a GPU the
    `time_estimate`, printed once here. Token counts come from the stage's first `sample` rows, tokenized by its
    processor. On a CPU, or a card with no datasheet numbers (then it says so), the estimate is None."""
    from .memory import TEMPLATE_TOKENS, image_tokens
    from .models import resolve_device, resolve_precision

    device = resolve_device(recipe.device)
    precision = resolve_precision(recipe.precision, device)
    facts = {"precision": precision, "time_estimate": None}
    if not device.startswith("cuda") or len(ds) == 0:
        return facts
    try:
        c = card()
    except UnknownCardError as e:
        print(f"time estimate for {stage}: none ({e})")
        return facts
    tok = getattr(processor, "tokenizer", processor)
    rows = ds.select(range(min(sample, len(ds))))
    n_img = image_tokens(recipe)
    prompt = [_row_tokens(tok, r["prompt"], n_img) + TEMPLATE_TOKENS for r in rows]
    rl = stage in ("grpo", "dapo")
    world = max(1, getattr(args, "world_size", 1))
    eff = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    if rl:
        new = args.max_completion_length
        tokens = int(sum(prompt) / len(prompt)) + new
        per_epoch = math.ceil(len(ds) * args.num_generations / eff)
        policy = [_row_tokens(tok, [{"content": r["policy"]}], n_img) for r in rows] if policy_rollout else [0]
    else:
        comp = [_row_tokens(tok, r["completion"], n_img) for r in rows]
        tokens, new, policy = int((sum(prompt) + sum(comp)) / len(rows)), None, [0]
        per_epoch = math.ceil(len(ds) / eff)
    steps = args.max_steps if args.max_steps and args.max_steps > 0 else math.ceil(per_epoch * args.num_train_epochs)
    est = estimate_stage(recipe, stage, steps, tokens=tokens, gpu=c, precision=precision,
                         micro_batch=args.per_device_train_batch_size, accumulation=args.gradient_accumulation_steps,
                         image_tokens=n_img, completion_tokens=new, policy_tokens=max(policy),
                         prompt_tokens=tokens - new if rl else None, policy_rollout=policy_rollout)
    print(est)
    return dict(facts, time_estimate=est.to_dict())


__all__ = ["Card", "CARDS", "ACHIEVED_FRACTION", "BANDWIDTH_FRACTION", "UnknownCardError", "card", "Cost",
           "approx_tokens", "train_step_seconds", "generation_seconds", "estimate_stage", "StageEstimate",
           "stage_facts", "fmt_seconds", "resolve_card_precision"]
