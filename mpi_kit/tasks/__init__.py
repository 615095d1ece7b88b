"""The paper's datasets behind one interface (`base.Task`, with the dataset contract): ClevrPolicy (`clevr/`) and
GTAPolicy (`gta/`), each in its own folder. The pipeline, RL, the CLI, the inspector and the report look a task up
here instead of branching on its name, and import nothing from inside a task's folder:

    get_task("gta")            by name (what --dataset and summary.json say)
    task_of("runs/gta/data")   the task that built a data folder
    register_task(MyTask())    plug in a third one (a folder beside clevr/ and gta/, and one line below)
"""
from __future__ import annotations

from pathlib import Path

from .base import Row, Task
from .clevr import ClevrPolicyTask
from .custom import CustomPolicyTask
from .gta import GTAPolicyTask

TASKS: dict[str, Task] = {t.name: t for t in (ClevrPolicyTask(), GTAPolicyTask(), CustomPolicyTask())}


def register_task(task: Task) -> Task:
    """Make `task` available to the pipeline (`PipelineConfig(dataset=task.name)`), RL and the inspector."""
    if not task.name:
        raise ValueError("a task needs a name (what --dataset and summary.json's 'task' say)")
    TASKS[task.name] = task
    return task


def get_task(name: str | Task | None = None) -> Task:
    """The task called `name` (None: ClevrPolicy, the paper's main dataset); a Task is returned as it is."""
    if isinstance(name, Task):
        return name
    name = name or "clevr"
    if name not in TASKS:
        from ..data import DataError

        raise DataError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
    return TASKS[name]


def task_of(data_dir) -> Task:
    """The task whose data is in `data_dir`, from its summary.json: its "task" field, or for folders written
    before it had one, what the summary holds (a GTA summary counts `num_instances`, a ClevrPolicy one lists
    `policies` and has a depth)."""
    from ..data import DataError

    path = Path(data_dir) / "summary.json"
    if not path.exists():
        raise DataError(f"no summary.json in {data_dir}; build the data with `mpi-kit data` (ClevrPolicy) or "
                        f"`mpi-kit gta-data` (GTAPolicy)")
    from ..folders import read_json

    summary = read_json(path, "Rebuild the data into that folder (or a new one).")
    if "task" in summary:
        return get_task(summary["task"])
    if summary.get("source") in ("generated", "gta") and "num_instances" in summary:
        return TASKS["gta"]
    if "policies" in summary and "depth" in summary.get("config", {}):
        return TASKS["clevr"]
    raise DataError(f"{path} is neither a ClevrPolicy nor a GTAPolicy data summary; rebuild the data")


def task_of_results(results: dict) -> Task:
    """The task a pipeline's results.json is about (it says "dataset" for every task but ClevrPolicy)."""
    return get_task(results.get("dataset", "clevr"))


def task_of_log(columns) -> Task:
    """The task whose reward columns a rollout log carries (TRL names them after the reward functions)."""
    for t in TASKS.values():
        if t.reward_funcs and set(t.reward_names) <= set(columns):
            return t
    return TASKS["clevr"]


__all__ = ["Task", "Row", "TASKS", "register_task", "get_task", "task_of", "task_of_results", "task_of_log",
           "ClevrPolicyTask", "GTAPolicyTask", "CustomPolicyTask"]
