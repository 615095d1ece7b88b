"""Held-out accuracy, the measurement every comparison rests on: greedy completions (`generation.py`) on the data's
eval split in one setting, scored by the task that built the data (`Task.score_rows`). The settings: no policy in
context (the MPI setting), the policy back in context (In-Context, paper Table 4), and a Policy Override (a new
policy under the old name, paper Table 3). Each task's other evaluations are in its folder
(`mpi_kit/tasks/clevr/evaluate.py`: branching error, Policy Referral, general abilities, forgetting); the prompt cost
of a policy is `efficiency.py`.
"""
from __future__ import annotations

from .generation import SETTINGS, held_out


def evaluate_accuracy(model, processor, data_dir, setting: str = "no_policy", method: str = "", limit=None,
                      max_new_tokens: int = 256, batch_size: int = 8, progress: bool = False,
                      task=None) -> list[dict]:
    """Held-out accuracy in one setting: 'no_policy' (MPI), 'in_context' (policy in the prompt) or 'override'
    (a new policy under the old name in the prompt), scored by `task` (a `mpi_kit.tasks` Task, e.g.
    `task_of(data_dir)`; None: ClevrPolicy). Returns the per-example rows (the task's `summarize` groups them)."""
    from .data import DataError
    from .tasks import get_task

    if task is None:
        if "case" not in held_out(data_dir, setting, limit).column_names:
            raise DataError(f"{data_dir} is not ClevrPolicy data (its eval rows have no 'case'); pass the task that "
                            f"built it: evaluate_accuracy(..., task=mpi_kit.tasks.task_of({str(data_dir)!r}))")
        task = get_task("clevr")
    return task.evaluate_accuracy(model, processor, data_dir, setting, method, limit, max_new_tokens, batch_size,
                                  progress)


__all__ = ["SETTINGS", "evaluate_accuracy"]
