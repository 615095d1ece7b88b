"""Fixes for the pinned library versions, each scoped to where it is needed and removed when the pin moves.

TRL 1.15's GRPOTrainer scores completions through a fused LM head whose inner loop is a Triton kernel, even on
a CPU: with the CUDA build of torch (which ships Triton) it fails there with "0 active drivers". TRL 1.16 adds a
PyTorch fallback, but unsloth caps trl at 1.15. `patch_trl_cpu_logprobs()` gives 1.15 the same fallback: on a
CPU the per-token log-probabilities (and entropy etc.) are computed with plain PyTorch ops; on a GPU the original
kernel runs untouched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class _TorchChunkedLogProb:
    """TRL's ChunkedLogProbFunction interface in plain PyTorch (autograd does the backward)."""

    original = None

    @classmethod
    def apply(cls, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
        if hidden.device.type in ("cuda", "xpu") and cls.original is not None:
            return cls.original.apply(hidden, weight, bias, targets, temperature, chunk_size,
                                      final_logit_softcapping, logit_scale, outputs)
        z = hidden.float() @ weight.float().t()
        if bias is not None:
            z = z + bias.float()
        z = z * logit_scale
        if final_logit_softcapping is not None:
            z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
        z = z / temperature
        logp = F.log_softmax(z, dim=-1)
        logprobs = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():
            log_sum_sq = torch.logsumexp(2 * logp, dim=-1) if "log_sum_sq_probs" in outputs else None
            mean_logits = z.mean(-1) if "mean_logits" in outputs else None
            is_top1 = (z.argmax(-1) == targets) if "is_top1" in outputs else None
        return logprobs, entropy, log_sum_sq, mean_logits, is_top1


def patch_trl_cpu_logprobs() -> bool:
    """Install the CPU fallback into TRL < 1.16 (idempotent). Returns True if TRL needed it."""
    import trl
    from packaging.version import Version

    if Version(trl.__version__) >= Version("1.16.0"):
        return False
    import trl.trainer.utils as tu

    current = getattr(tu, "_ChunkedLogProbFunction", None)
    if current is not _TorchChunkedLogProb:
        _TorchChunkedLogProb.original = current
        tu._ChunkedLogProbFunction = _TorchChunkedLogProb
    return True


def disable_cpu_weight_packing(model) -> int:
    """Keep bitsandbytes 0.50's 4-bit layers in their trainable layout on every CPU; returns layers changed.

    On a CPU with AVX512-BF16, `Linear4bit.forward` in eval mode without grad repacks its weight for a CPU
    inference kernel, and the packing stays: training afterwards crashes (layers with bias) or gets silently wrong
    gradients (layers without). So one CPU would train differently from another. We switch that fast path off
    (and undo a packing already made), so every CPU runs the same 4-bit matmul for generation and training."""
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:  # no bitsandbytes: no 4-bit layers
        return 0
    n = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        w = module.weight
        if getattr(getattr(w, "quant_state", None), "packing_format_for_cpu", False):
            w.data, w.quant_state = _convert_weight_packed_for_cpu_inverse(w.data, w.quant_state)
        n += 1
    return n
