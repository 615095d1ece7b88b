"""The pooled advantage and the clipped objective as plain functions (`mpi_kit.advantages`): they equal what TRL
computes inside a step, training and the inspector's playground both call them, and changing the pooling rule in
that one place changes both."""
import pytest
import torch

from mpi_kit import advantages
from mpi_kit.advantages import clipped_objective, group_advantages, per_half_advantages, poro_advantages
from mpi_kit.rl import PolicyRolloutTrainer, rl_trainer
from mpi_kit.rollout_log import rescore

FAST = {"grpo.max_completion_length": 8, "grpo.per_device_train_batch_size": 8, "grpo.num_generations": 2}


def test_a_rescued_group_by_hand():
    # G = 2: both no-policy completions wrong (0), one policy-aware right (1): pooled, the group has signal
    r = [0.0, 0.0, 1.0, 0.0]
    mean, std = 0.25, torch.tensor(r).std().item()
    assert poro_advantages(r, 2).tolist() == pytest.approx([(x - mean) / (std + 1e-4) for x in r], rel=1e-5)
    assert per_half_advantages(r, 2)[:2].tolist() == [0.0, 0.0]  # the no-policy half alone: no gradient
    assert group_advantages([1.0, 1.0, 1.0], 3).tolist() == [0.0, 0.0, 0.0]
    assert group_advantages([0.0, 2.0], 2, scale="none").tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        poro_advantages([1.0, 2.0, 3.0], 2)


def test_the_clip_acts_only_beyond_its_range():
    t = clipped_objective(logp=torch.log(torch.tensor([[1.5, 1.1, 0.5]])), old_logp=torch.zeros(1, 3),
                          advantages=torch.tensor([1.0]), eps_low=0.2, eps_high=0.28)
    assert t["ratio"].tolist()[0] == pytest.approx([1.5, 1.1, 0.5])
    assert t["objective"].tolist()[0] == pytest.approx([1.28, 1.1, 0.5])  # A > 0: capped above at 1 + eps_high
    assert t["clipped"].tolist()[0] == [True, False, False]
    neg = clipped_objective(torch.log(torch.tensor([0.5, 1.5])), torch.zeros(2), torch.tensor([-1.0, -1.0]))
    assert neg["clipped"].tolist() == [True, False] and neg["loss"].tolist() == pytest.approx([0.8, 1.5])


def _trainer(small_rl_setup, tmp_path, poro=True, **kw):
    root, base = small_rl_setup
    t, _, _ = rl_trainer("tiny", root / "data", tmp_path / "out", "grpo", poro, model=base, max_steps=2, **FAST, **kw)
    rewards = iter([0.0, 0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0] * 10)  # a rescued group, then one of each kind
    t.reward_funcs = [lambda completions, **k: [next(rewards) for _ in completions]]
    t.reward_func_names, t.reward_processing_classes, t.reward_weights = ["fixed"], [None], torch.ones(1)
    inputs = [dict(t.train_dataset[i]) for i in range(2) for _ in range(t.num_generations)]
    return t, inputs


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_training_uses_the_function_and_it_equals_trls_own(small_rl_setup, tmp_path, scale, monkeypatch):
    t, inputs = _trainer(small_rl_setup, tmp_path, **{"grpo.scale_rewards": scale})
    ours = t._generate_and_score_completions(inputs)["advantages"]
    monkeypatch.setattr(PolicyRolloutTrainer, "_advantages", lambda self, out: out)  # TRL's inside computation
    t2, inputs2 = _trainer(small_rl_setup, tmp_path, **{"grpo.scale_rewards": scale})
    trls = t2._generate_and_score_completions(inputs2)["advantages"]
    expected = poro_advantages([0.0, 0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0], 2, scale)
    assert torch.allclose(trls, expected, atol=1e-5) and torch.allclose(ours, expected, atol=1e-5)


def test_changing_the_pooling_rule_in_one_place_changes_training_and_the_inspector(small_rl_setup, tmp_path,
                                                                                     monkeypatch):
    group = [0.0, 0.0, 1.0, 0.0]
    pooled = rescore("no answer here", "Case 2", group, 0)["advantage"]
    monkeypatch.setattr(advantages, "poro_advantages", per_half_advantages)  # a learner's edit
    t, inputs = _trainer(small_rl_setup, tmp_path)
    trained = t._generate_and_score_completions(inputs)["advantages"]
    assert torch.allclose(trained, per_half_advantages([0.0, 0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0], 2), atol=1e-5)
    assert trained[:2].tolist() == [0.0, 0.0]  # the rescued group's no-policy half: no gradient any more
    assert pooled < 0 and rescore("no answer here", "Case 2", group, 0)["advantage"] == 0.0
    assert list(t._logs["advantages"])[-8:] == pytest.approx(trained.tolist())  # the rollout log shows it too


def test_trls_loss_is_the_clipped_objective_of_the_function(small_rl_setup, tmp_path):
    """TRL's GRPO loss on a batch whose old log-probs differ from the current ones (ratios away from 1, some
    clipped) equals `clipped_objective` averaged over each completion's tokens, then over completions."""
    t, inputs = _trainer(small_rl_setup, tmp_path, **{"grpo.beta": 0.0})
    out = t._generate_and_score_completions(inputs)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask_all = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logp, _, _ = t._get_per_token_logps_and_entropies(
            t.model, ids, mask_all, out["completion_ids"].size(1), pixel_values=out.get("pixel_values"),
            image_grid_thw=out.get("image_grid_thw"), num_images=out.get("num_images"))
    old = logp + 0.4 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(0))
    out["old_per_token_logps"] = old
    t.current_gradient_accumulation_steps = 1
    seen, original = [], t._get_per_token_logps_and_entropies
    t._get_per_token_logps_and_entropies = lambda *a, **k: (lambda r: (seen.append(r[0].detach()), r)[1])(
        original(*a, **k))  # the log-probs TRL's loss used
    loss = t._compute_loss(t.model, out)
    assert torch.allclose(seen[0], logp, atol=1e-2)
    terms = clipped_objective(seen[0], old, out["advantages"], t.epsilon_low, t.epsilon_high)
    m = out["completion_mask"]
    assert (terms["clipped"] & m.bool()).any()  # the clip acts on some tokens of this batch
    expected = ((terms["loss"] * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
