"""The arithmetic that *is* GRPO and PolicyRollout, one plain function per idea, used by training
(`rl.PolicyRolloutTrainer`), by the rollout inspector's playground (`rollout_log.rescore`) and by the exercises.

A group is the completions sampled for one prompt. GRPO scores each completion against its own group:
advantage = (reward - group mean) / (group std + eps). PolicyRollout (paper Eq. 3) makes the group 2G: G completions
sampled without the policy, then G sampled with it in context, pooled before the mean and std are taken, so a
policy-aware success lifts the whole group's baseline and a no-policy failure beside it gets a negative advantage.
Rewards are laid out group after group, each group's no-policy half first (as TRL repeats a prompt's copies).
"""
from __future__ import annotations

import torch

EPS = 1e-4  # TRL's: added to the std so a group of equal rewards divides by a small number, not by zero
SCALES = ("group", "batch", "none")  # GRPOConfig.scale_rewards: whose std divides the advantage


def _as_tensor(rewards) -> torch.Tensor:
    return torch.as_tensor(rewards, dtype=torch.float32).flatten()


def _std(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Sample std (ddof 1) ignoring NaN (an unscorable completion), as TRL's `nanstd`."""
    mean = torch.nanmean(x, dim=dim, keepdim=dim is not None)
    n = (~torch.isnan(x)).sum(dim=dim, keepdim=dim is not None)
    return torch.sqrt(torch.nansum((x - mean) ** 2, dim=dim, keepdim=dim is not None) / (n - 1).clamp(min=1))


def group_advantages(rewards, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO: each completion's reward minus its group's mean, divided by the group's std (`scale="group"`), the
    whole batch's std ("batch") or nothing ("none"). A group whose rewards are all equal gives all zeros."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    r = _as_tensor(rewards)
    if group_size < 1 or r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    groups = r.view(-1, group_size)
    adv = groups - torch.nanmean(groups, dim=1, keepdim=True)
    if scale == "group":
        std = _std(groups, dim=1) if group_size > 1 else torch.zeros_like(groups[:, :1])
        adv = adv / (std + EPS)
    elif scale == "batch":
        adv = adv / (_std(r) + EPS) if r.numel() > 1 else adv / EPS
    return torch.nan_to_num(adv.flatten(), nan=0.0)  # an unscorable completion carries no signal


def poro_advantages(rewards, G: int, scale: str = "group") -> torch.Tensor:
    """PolicyRollout: G no-policy and G policy-aware rewards per prompt, pooled into ONE group of 2G before the
    mean and std (paper Eq. 3). Every advantage is then trained on the no-policy prompt."""
    return group_advantages(rewards, 2 * G, scale)


def per_half_advantages(rewards, G: int, scale: str = "group") -> torch.Tensor:
    """The alternative a reader may ask about: normalise each half on its own (no pooling). A no-policy half that
    failed everywhere then gets zero advantages, as in plain GRPO, whatever its policy-aware half did."""
    return group_advantages(rewards, G, scale)


def clipped_objective(logp, old_logp, advantages, eps_low: float = 0.2, eps_high: float = 0.2) -> dict:
    """PPO/GRPO's clipped surrogate per token: ratio = exp(logp - old_logp); the token's objective is
    min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), and its loss the negative. A token is *clipped* when
    the clipped term is the smaller one, so its gradient is zero: the update already moved it far enough."""
    logp, old_logp = torch.as_tensor(logp, dtype=torch.float32), torch.as_tensor(old_logp, dtype=torch.float32)
    adv = torch.as_tensor(advantages, dtype=torch.float32)
    if adv.dim() == 1 and logp.dim() == 2:
        adv = adv.unsqueeze(1)  # one advantage per completion, shared by its tokens
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    objective = torch.minimum(unclipped, clipped)
    return {"ratio": ratio, "objective": objective, "loss": -objective, "clipped": clipped < unclipped}


__all__ = ["EPS", "SCALES", "group_advantages", "poro_advantages", "per_half_advantages", "clipped_objective"]
