"""A third task in one folder, to prove the task interface (`mpi_kit.tasks.base.Task`) is the whole contract:
ColourPolicy, one condition on a one-colour image. `tests/test_third_task.py` registers it and runs it through
data, the CLI, RL and evaluation with no change to the pipeline or the CLI."""
from .task import ColourPolicyTask

__all__ = ["ColourPolicyTask"]
