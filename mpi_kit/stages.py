"""The training stages of TriMPI and its baselines, in one registry that every part of the kit reads.

A stage's name is what its summary.json says (`"stage"`), what `run_settings` records, and the Recipe section that
holds its hyperparameters (PolicyRollout runs use their algorithm's section). `kind` says which module trains it
(`cpt`, `sft`, `rl`, `distill`), `data` which dataset kind it trains on, and `phases` what the memory planner predicts
for it. Policy distillation is not the paper's: a stage beside TriMPI (`mpi_kit.distill`); the planner counts it as
VM-CPT, whose sequences carry the policy as the teacher's do.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str            # summary.json's "stage"
    title: str           # the paper's words
    kind: str            # the module that trains it: cpt, sft, rl or distill
    section: str         # the Recipe section with its hyperparameters
    data: str            # the dataset kind it trains on (`mpi_kit.data.load_kit_data`)
    phases: tuple        # memory-planner phases (`mpi_kit.memory.plan`)
    mode: str | None = None        # sft: cot or direct
    algo: str | None = None        # rl: grpo or dapo
    policy_rollout: bool = False   # rl: PolicyRollout on


STAGES = {s.name: s for s in (
    Stage("vm_cpt", "VM-CPT", "cpt", "vm_cpt", "vmcpt", ("vm_cpt",)),
    Stage("sft_cot", "CoT SFT", "sft", "sft_cot", "cot", ("sft",), mode="cot"),
    Stage("sft_direct", "Direct SFT", "sft", "sft_direct", "qa", ("sft",), mode="direct"),
    Stage("grpo", "GRPO", "rl", "grpo", "rl", ("rl_generation", "rl_update"), algo="grpo"),
    Stage("dapo", "DAPO", "rl", "dapo", "rl", ("rl_generation", "rl_update"), algo="dapo"),
    Stage("poro_grpo", "PoRo-GRPO", "rl", "grpo", "rl", ("rl_generation", "rl_update"), algo="grpo",
          policy_rollout=True),
    Stage("poro_dapo", "PoRo-DAPO", "rl", "dapo", "rl", ("rl_generation", "rl_update"), algo="dapo",
          policy_rollout=True),
    Stage("distill", "Policy Distillation", "distill", "distill", "rl", ("vm_cpt",)),
)}
PHASES = tuple(dict.fromkeys(p for s in STAGES.values() for p in s.phases))  # vm_cpt, sft, rl_generation, rl_update


def sft_stage(mode: str) -> Stage:
    """The SFT stage of `mode` ('cot' or 'direct')."""
    from .data import DataError

    modes = {s.mode: s for s in STAGES.values() if s.kind == "sft"}
    if mode not in modes:
        raise DataError(f"SFT mode must be one of {', '.join(modes)}, got {mode!r}")
    return modes[mode]


def rl_stage(algo: str, policy_rollout: bool = False) -> Stage:
    """The RL stage of `algo` ('grpo' or 'dapo'), with PolicyRollout or without."""
    for s in STAGES.values():
        if s.kind == "rl" and s.algo == algo and s.policy_rollout == bool(policy_rollout):
            return s
    algos = sorted({s.algo for s in STAGES.values() if s.kind == "rl"})
    raise ValueError(f"algo must be one of {tuple(algos)}, got {algo!r}")


def section_stage(section: str) -> Stage:
    """The first stage whose hyperparameters live in Recipe section `section`."""
    return next(s for s in STAGES.values() if s.section == section)


__all__ = ["Stage", "STAGES", "PHASES", "sft_stage", "rl_stage", "section_stage"]
