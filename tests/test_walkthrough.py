"""Notebook 06's walkthrough of one rescued group of the shipped recorded run: `first_rescued_group` picks it, and
the advantages training uses (`mpi_kit.advantages`) recomputed on it equal the rollout log's (no model, no GPU)."""
import pandas as pd
import pytest
import torch

from mpi_kit.advantages import group_advantages, per_half_advantages, poro_advantages
from mpi_kit.recorded_run import ASSET_RUN
from mpi_kit.rollout_log import (NO_POLICY, POLICY_AWARE, first_rescued_group, load_rollouts, policy_rescues,
                                 run_summary)


@pytest.fixture(scope="module")
def df():
    return load_rollouts(ASSET_RUN)


def test_the_first_rescued_group_of_the_recorded_run(df):
    group = first_rescued_group(df)
    G = run_summary(ASSET_RUN)["G"]
    assert len(group) == 2 * G and group["group"].nunique() == 1
    assert group["step"].iloc[0] == policy_rescues(df)["step"].min()
    assert group["source"].tolist() == [NO_POLICY] * G + [POLICY_AWARE] * G
    no_policy, aware = group[group["source"] == NO_POLICY], group[group["source"] == POLICY_AWARE]
    assert not no_policy["correct"].any() and aware["correct"].any()


def test_its_advantages_are_the_logged_ones_and_plain_grpo_gets_none(df):
    group = first_rescued_group(df)
    G = len(group) // 2
    assert run_summary(ASSET_RUN).get("scale_rewards", "group") == "group"
    rewards = group["reward"].tolist()
    adv = poro_advantages(rewards, G)
    assert torch.allclose(adv, torch.tensor(group["advantage"].tolist()), atol=1e-3)
    right = torch.tensor(group["correct"].tolist())
    assert adv[right].min() > 0 > adv[~right].max()
    assert (group_advantages(rewards[:G], G) == 0).all()  # the no-policy half alone: all rewards equal
    assert (per_half_advantages(rewards, G)[:G] == 0).all()


def _row(step, prompt, source, correct):
    return {"step": step, "prompt_id": prompt, "attempt": 0, "group": f"{step}/{prompt}/0", "source": source,
            "correct": correct, "reward": 1.0 if correct else 0.1, "advantage": 0.0, "gold": "Case 1",
            "scene_id": prompt, "truncated": False}


def test_earliest_step_first_and_no_policy_half_first_whatever_the_log_order():
    rows = [_row(3, "a", POLICY_AWARE, True), _row(3, "a", NO_POLICY, False),  # rescued, later step, logged first
            _row(2, "b", NO_POLICY, True), _row(2, "b", POLICY_AWARE, True),  # not rescued: no-policy half right
            _row(2, "c", POLICY_AWARE, False), _row(2, "c", POLICY_AWARE, True), _row(2, "c", NO_POLICY, False),
            _row(2, "c", NO_POLICY, False)]
    group = first_rescued_group(pd.DataFrame(rows))
    assert set(group["group"]) == {"2/c/0"}
    assert group["source"].tolist() == [NO_POLICY, NO_POLICY, POLICY_AWARE, POLICY_AWARE]
    assert group["correct"].tolist() == [False, False, False, True]  # each half keeps its log order


def test_no_rescued_group_is_a_clear_error():
    with pytest.raises(ValueError, match="no rescued group"):
        first_rescued_group(pd.DataFrame([_row(1, "a", NO_POLICY, False), _row(1, "a", NO_POLICY, False)]))
