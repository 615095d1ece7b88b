"""GTAPolicy (paper App. C.2): versioned tool calls under user-profile rules, one folder.

    policy.py   the tools, their versions, the rules and the user profiles a policy is made of
    data.py     the datasets: instances (generated, or read from GTA) under policies, in the kit's five kinds
    rewards.py  the RL rewards and scores: a tool call's format, name and arguments against the gold call
    task.py     `GTAPolicyTask`: what ties them to the pipeline, RL, the inspector and the report
"""
from .task import GTAPolicyTask

__all__ = ["GTAPolicyTask"]
