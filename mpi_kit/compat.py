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
