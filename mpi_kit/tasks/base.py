"""The interface every dataset of the paper implements, so that the pipeline, RL, the inspector and the report ask
the task instead of branching on its name (karpathy/nanochat's `tasks/common.py` is the model). Each task lives in
its own folder (`clevr/`, `gta/`), whose `task.py` subclasses `Task`; `mpi_kit.tasks` registers it.

The dataset contract, what every task's data folder holds (the stages read nothing else):
- `summary.json` naming the task ("task": its `name`), written last, so a folder without it is unfinished;
- the five kinds of `mpi_kit.data.KINDS`, each a saved `datasets.DatasetDict` with the columns of
  `mpi_kit.data.FEATURES` (a task may add its own): qa (train/test: query -> answer), cot (train/test: query ->
  `<think>`reasoning`</think>` + answer, no policy in the prompt), vmcpt (train: policy + query -> reasoning +
  answer), rl (train: the no-policy prompt, the policy in its `policy` / `policy_images` columns) and eval
  (no_policy / in_context / override: the held-out rows in each setting);
- every row in TRL's conversational format: `prompt` and `completion` chat messages (`data.user_prompt`,
  `data.assistant`), its images in `images`, in the order of the prompt's image parts;
- the gold answer in the `gold_column` the task names (ClevrPolicy: `case`; GTAPolicy: `answer`, the gold call);
- RL rewards as a (format, accuracy) pair of plain functions `fn(completions, **columns) -> list[float]`
  (`reward_funcs`), weighted `reward_weights`.

A task also knows its evaluation (one trained model -> a dict of numbers), how its results read (the table, the
report, the paper's numbers), its data command (`mpi-kit <data_command>`, flags from `data_settings()`) and what
the rollout inspector shows beside a group (`prompt_view`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """One row of a comparison: its label ("N4", "GTA") names its folder and its results' keys ("N4/CoT SFT");
    `fields` are what each of its results carries besides the numbers (ClevrPolicy: the depth)."""
    label: str
    fields: tuple = ()

    @property
    def efficiency_key(self) -> str:
        """Where results.json keeps this row's prompt-cost measurement ("4" at N = 4, else the label)."""
        return str(dict(self.fields).get("depth", self.label))


class Task:
    """A dataset of policies to internalize. Subclasses set the class attributes and implement the methods that
    raise here; the rest has a default that fits both of the paper's tasks."""

    name: str = ""            # what --dataset and summary.json's "task" say
    title: str = ""           # the paper's name, for people
    methods: tuple = ()       # the methods a pipeline compares when none are chosen
    config_fields: tuple = ()  # PipelineConfig fields only this task reads (left out of other tasks' records)
    gold_column: str = "case"  # the dataset column the accuracy reward compares with
    reward_funcs: tuple = ()  # TRL reward functions fn(completions, **columns): (format, accuracy)
    reward_weights: tuple = (0.1, 0.9)

    # ---------------------------------------------------------------- data
    def check(self, cfg) -> None:
        """Refuse a pipeline configuration this task cannot run (a clear DataError), before anything is built."""

    def rows(self, cfg) -> list[Row]:
        raise NotImplementedError

    def build_data(self, cfg, row: Row, data_dir: Path, recipe) -> None:
        """Write the row's datasets into `data_dir` (with a summary.json that names this task)."""
        raise NotImplementedError

    # the data command, `mpi-kit <data_command>`: its flags are the fields (and help) of `data_settings()`
    data_command: str = ""   # the CLI subcommand that builds this task's data ("" for none)
    data_help: str = ""      # its one-line help
    data_files: str = "summary.json"  # what a build writes beside the datasets, as the command reports it
    summary_keys: tuple = ()  # what the command prints from the build's summary
    errors: tuple = ()        # this task's own exception types: a command reports them as a clear error

    def data_settings(self) -> type:
        """The dataclass of what to build (each field with its help text: the CLI is made from it)."""
        raise NotImplementedError

    def build(self, settings, progress: bool = True) -> dict:
        """Build the datasets `settings` (a `data_settings()` instance) describe into `settings.out`, with a
        progress bar or not; returns the summary it wrote."""
        raise NotImplementedError

    def policy_texts(self, data_dir: Path) -> list[str]:
        """The policy documents of a data folder as text (memory plans size the policy-aware prompts by them)."""
        raise NotImplementedError

    def typical_texts(self, **fields) -> dict:
        """Typical texts of a row with `fields` (ClevrPolicy: depth): "policy", "query", "answer" (a string each)
        and "cots" (a few chains of thought): what the notebooks' time estimates (`scales`) count tokens of."""
        raise NotImplementedError

    def data_report(self, data_dir: Path) -> Path:
        """Write data_dir/report.html: a page that shows the data (its policies and some held-out examples)."""
        raise NotImplementedError

    def completion_budget(self, cfg, data_dir: Path) -> int:
        """Tokens a model may write for one answer of this data (evaluation and RL rollouts)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- answers and rewards
    def parse(self, completion) -> str | None:
        """The answer a completion gives, as shown beside the gold one (None: it gives none)."""
        raise NotImplementedError

    def is_correct(self, answer: str | None, gold) -> bool:
        """Whether a parsed answer (`parse`'s, as the rollout log records it) is the gold one."""
        raise NotImplementedError

    def score(self, completion, gold) -> tuple[float, float]:
        """(format, accuracy) rewards of one completion against `gold`, as the RL trainer computes them."""
        fmt, acc = (f([completion], **{self.gold_column: [gold]})[0] for f in self.reward_funcs)
        return fmt, acc

    def reward(self, completion, gold) -> float:
        """The weighted total the trainer optimizes."""
        return sum(w * r for w, r in zip(self.reward_weights, self.score(completion, gold)))

    @property
    def reward_names(self) -> tuple[str, str]:
        """The rollout log's columns for the (format, accuracy) rewards: TRL names them after the functions."""
        return tuple(f.__name__ for f in self.reward_funcs)

    # ---------------------------------------------------------------- evaluation
    def score_rows(self, rows, completions, method: str = "", setting: str = "no_policy") -> list[dict]:
        """One tidy dict per (row, completion): gold, the parsed answer, its scores (`evaluate_accuracy` calls it)."""
        raise NotImplementedError

    def evaluate_accuracy(self, model, processor, data_dir, setting: str = "no_policy", method: str = "",
                          limit: int | None = None, max_new_tokens: int = 256, batch_size: int = 8,
                          progress: bool = False) -> list[dict]:
        """Greedy completions on the eval split of `setting` (`generation.held_out`), scored by `score_rows`."""
        from ..generation import generate_completions, held_out

        rows = held_out(data_dir, setting, limit)
        completions = generate_completions(model, processor, rows, max_new_tokens, batch_size, progress)
        return self.score_rows(rows, completions, method, setting)

    def summarize(self, rows: list[dict]) -> list[dict]:
        """`score_rows`' dicts grouped per (method, setting, ...) into the task's numbers, each with its n."""
        raise NotImplementedError

    def evaluate(self, method: str, model, processor, data_dir: Path, cfg) -> dict:
        """Every evaluation of one trained model on one row, as tidy numbers for results.json."""
        raise NotImplementedError

    def efficiency(self, model, processor, data_dir: Path) -> list[dict]:
        """Prompt tokens and prefill time with the policy in context vs without it, on the data's eval split
        (`mpi_kit.efficiency`; both paper tasks write `no_policy` and `in_context` rows)."""
        from ..efficiency import efficiency

        return efficiency(model, processor, data_dir)

    def prompt_view(self, data_dir: Path, width: int):
        """What the rollout inspector shows beside a group: a callable row -> HTML (None when the row's example is
        not in the data), or None for a task with nothing to show but the text."""
        return None

    def context_check(self, model, processor, data_dir: Path) -> dict | None:
        """A check of the data against the model, recorded once in results.json (none by default)."""
        return None

    # ---------------------------------------------------------------- results
    def paper_table(self) -> dict:
        return {}

    def table(self, results: dict) -> str:
        raise NotImplementedError

    def report(self, out: Path, results: dict) -> Path:
        """Write out/report.html for a pipeline's results; returns its path."""
        raise NotImplementedError
