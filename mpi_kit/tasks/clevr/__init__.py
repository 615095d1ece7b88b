"""ClevrPolicy (paper §3.1, App. C.1): decision-tree policies over CLEVR-style scenes, one folder.

    scenes.py       the scenes: sampled or read from CLEVR, rendered, cropped
    policy.py       the policies: decision trees of conditions and cases, their overrides
    data.py         the datasets: K policies x M scenes in the kit's five kinds (`build_datasets`)
    forward_cot.py  the paper's forward CoT: the base model writes the chains of thought, right ones kept
    rewards.py      the RL rewards: format and boxed-case accuracy
    evaluate.py     scoring, branching error, Policy Referral, general abilities and forgetting
    abilities.py    per-step checks of a chain of thought against the gold one (where it broke)
    task.py         `ClevrPolicyTask`: what ties them to the pipeline, RL, the inspector and the report
"""
from .task import ClevrPolicyTask

__all__ = ["ClevrPolicyTask"]
