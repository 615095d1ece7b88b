"""A third task is one folder and one registration: `tests/toy_task/` (ColourPolicy) registered with
`mpi_kit.tasks.register_task` gets its data command in the CLI and runs through data, SFT, RL and evaluation in
the pipeline, with no line of the pipeline or the CLI changed for it."""
import json

import pytest

from mpi_kit import tasks


@pytest.fixture
def colour(monkeypatch):
    from toy_task import ColourPolicyTask

    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))  # the registration is undone after the test
    return tasks.register_task(ColourPolicyTask())


def test_the_cli_builds_a_registered_tasks_data(colour, tmp_path, capsys):
    from mpi_kit.cli import build_parser, main
    from mpi_kit.data import load_kit_data

    assert "colour-data" in build_parser()._subparsers._group_actions[0].choices
    assert main(["colour-data", "--out", str(tmp_path / "d"), "--num-images", "8"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert tasks.task_of(tmp_path / "d") is colour
    assert len(load_kit_data(tmp_path / "d", "eval")["override"]) == 2
    assert main(["colour-data", "--out", str(tmp_path / "e"), "--num-images", "2"]) == 2  # its own DataError
    assert "num_images must be >= 4" in capsys.readouterr().err


def test_a_third_task_runs_through_data_rl_and_evaluation(colour, tmp_path):
    from mpi_kit.pipeline import PipelineConfig, run_pipeline

    res = run_pipeline(PipelineConfig(out=str(tmp_path / "p"), dataset="colour",
                                      methods=("In-Context", "CoT SFT + GRPO"), sft_steps=2, rl_steps=2,
                                      eval_limit=4, forgetting=False,
                                      overrides={"grpo.num_generations": 2, "grpo.per_device_train_batch_size": 2}))
    saved = json.loads((tmp_path / "p" / "results.json").read_text())
    assert saved["dataset"] == "colour" and set(saved["methods"]) == {"COLOUR/In-Context", "COLOUR/CoT SFT + GRPO"}
    rl = saved["methods"]["COLOUR/CoT SFT + GRPO"]
    assert rl["train"]["steps"] == 2 and rl["rollouts"], "the RL stage ran on the task's rewards"
    assert all(r["n"] == 4 and len(r["rows"]) == 4 for r in saved["methods"].values())
    assert "ColourPolicy" in (tmp_path / "p" / "report.html").read_text() and res["report"].endswith("report.html")
    assert saved["efficiency"]["COLOUR"], "the prompt cost of the policy, measured on the base model"
