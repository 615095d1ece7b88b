"""Your own policy (beside the paper): a policy document of your own (text, optional images) and rows of (image,
query, optional answer) in a JSONL file, one folder.

    data.py   the rows and the policy in the kit's dataset kinds (`mpi-kit custom-data`): rl to distil on, eval
              where answers exist; every bad input refused before any model loads
    task.py   `CustomPolicyTask`: answers read from `\\boxed{...}` (or the last line) and compared with the gold
"""
from .task import CustomPolicyTask

__all__ = ["CustomPolicyTask"]
