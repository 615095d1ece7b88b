"""PolicyRollout on TRL's GRPOTrainer, on a ~0.2M-parameter random Qwen2.5-VL: pooled 2G groups and their
advantages, no policy token in anything that reaches the loss, PoRo off == plain GRPOTrainer, dynamic sampling."""
import torch
from trl import GRPOTrainer

from conftest import hashed_reward
from mpi_kit.rl import NO_POLICY, POLICY_AWARE, PolicyRolloutTrainer, rl_trainer

FAST = {"grpo.max_completion_length": 8, "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2,
        "dapo.max_completion_length": 8, "dapo.per_device_train_batch_size": 4, "dapo.num_generations": 2}


def trainer(small_rl_setup, tmp_path, poro=True, algo="grpo", **kw):
    root, base = small_rl_setup
    t, _, _ = rl_trainer("tiny", root / "data", tmp_path / "out", algo, poro, model=base, max_steps=2, **FAST, **kw)
    return t


def batch(t, n_prompts=1):
    rows = [t.train_dataset[i] for i in range(n_prompts)]
    return [dict(r) for r in rows for _ in range(t.num_generations)]


def test_pooled_group_of_2g_and_its_advantages(small_rl_setup, tmp_path):
    t = trainer(small_rl_setup, tmp_path)
    counter = iter(range(10_000))
    t.reward_funcs = [lambda completions, **kw: [float(next(counter)) ** 2 for _ in completions]]
    t.reward_func_names, t.reward_processing_classes = ["square"], [None]
    t.reward_weights = torch.ones(1)
    inputs = batch(t, 2)
    assert t.num_generations == 4 and t.policy_aware_mask(8) == [False, False, True, True] * 2
    out = t._generate_and_score_completions(inputs)
    r = torch.tensor([float(i) ** 2 for i in range(8)]).view(2, 4)  # one pooled group of 2G = 4 per prompt
    expected = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
    assert torch.allclose(out["advantages"], expected, atol=1e-5)
    assert list(t._logs["extra"]["source"])[-4:] == [NO_POLICY, NO_POLICY, POLICY_AWARE, POLICY_AWARE]


def test_policy_tokens_never_reach_the_loss(small_rl_setup, tmp_path):
    t = trainer(small_rl_setup, tmp_path)
    tok = t.processing_class.tokenizer
    seen = []
    original = t._tokenize_prompts
    t._tokenize_prompts = lambda prompts: (seen.append(prompts), original(prompts))[1]
    inputs = batch(t, 1)
    out = t._generate_and_score_completions(inputs)
    # generation: the second half saw the policy document, the first did not
    texts = ["".join(p.get("text") or "" for p in pr[0]["content"] if p["type"] == "text") for call in seen[1:]
             for pr in call]
    assert [("# Condition 1" in x) for x in texts] == [False, False, True, True]
    # every tensor that reaches the loss is built on the no-policy prompt and the scene image only
    decoded = tok.batch_decode(out["prompt_ids"])
    assert all("Condition" not in d and "Policy:" in d for d in decoded)  # the query names the policy, no more
    assert out["num_images"] == [1] * len(inputs)
    assert out["image_grid_thw"].shape[0] == len(inputs)
    no_policy_ids, _, _ = original([seen[0][0]])
    assert out["prompt_mask"].sum(1).tolist() == [len(no_policy_ids[0])] * len(inputs)


def test_both_halves_in_one_generate_call_unless_microbatched(small_rl_setup, tmp_path):
    """Default: one decode loop for the pooled 2G (PoRo costs ~ a GRPO step); policy_microbatch=1: the no-policy
    half, then one call per policy-aware prompt."""
    for microbatch, calls in ((None, 1), (1, 3)):
        t = trainer(small_rl_setup, tmp_path / str(microbatch), policy_microbatch=microbatch)
        seen = []
        original = t._tokenize_prompts
        t._tokenize_prompts = lambda prompts, o=original: (seen.append(prompts), o(prompts))[1]
        t._generate_and_score_completions(batch(t, 1))
        assert len(seen) - 1 == calls  # the first tokenization is TRL's own, of the no-policy prompts


def test_poro_off_is_plain_grpo(small_rl_setup, tmp_path):
    """Same seed, same data, same rewards: PolicyRolloutTrainer(policy_rollout=False) logs exactly the losses and
    rewards of TRL's own GRPOTrainer, step by step."""
    def make(cls, sub, **kw):
        src = trainer(small_rl_setup, tmp_path / sub, poro=False)
        return cls(model=src.model, args=src.args, train_dataset=src.train_dataset,
                   processing_class=src.processing_class, reward_funcs=[hashed_reward, hashed_reward], **kw)

    ours = make(PolicyRolloutTrainer, "a", policy_rollout=False)
    ours.train()
    plain = make(GRPOTrainer, "b")  # built after the first run, so both start from the same seeded RNG state
    plain.train()
    loss = lambda tr: [(h["step"], h["loss"], h["reward"]) for h in tr.state.log_history if "loss" in h]
    assert loss(ours) == loss(plain) and len(loss(ours)) == 2
    assert any(r != 0 for _, _, r in loss(ours))
    for (n, a), (_, b) in zip(ours.model.named_parameters(), plain.model.named_parameters()):
        assert torch.equal(a, b), n


def test_dynamic_sampling_retries_then_drops(small_rl_setup, tmp_path):
    t = trainer(small_rl_setup, tmp_path, algo="dapo")
    assert t.dynamic_sampling_retries == 20 and t.beta == 0.0 and t.epsilon_high == 0.28
    t.dynamic_sampling_retries = 3
    calls = []

    def flat(completions, **kw):  # never any variance: every attempt is dropped
        calls.append(len(completions))
        return [1.0] * len(completions)

    t.reward_funcs, t.reward_func_names, t.reward_processing_classes = [flat], ["flat"], [None]
    t.reward_weights = torch.ones(1)
    t.model.train()
    out = t._generate_and_score_completions(batch(t, 1))
    assert len(calls) == 4  # first try + 3 retries, then the limit
    assert out["completion_mask"].sum() == 0 and out["num_items_in_batch"] == 0
    assert t._metrics["train"]["dynamic_sampling/dropped_groups"][-1] == 1.0

    attempt = iter(range(100))

    def second_time_lucky(completions, **kw):
        k = next(attempt)
        return [float(i) if k >= 1 else 0.0 for i in range(len(completions))]

    t.reward_funcs = [second_time_lucky]
    out = t._generate_and_score_completions(batch(t, 1))
    assert t._metrics["train"]["dynamic_sampling/retries"][-1] == 1.0
    assert t._metrics["train"]["dynamic_sampling/dropped_groups"][-1] == 0.0
    assert out["advantages"].abs().sum() > 0 and out["completion_mask"].sum() > 0


def test_dynamic_sampling_stops_at_its_work_cap_and_says_so(small_rl_setup, tmp_path, caplog):
    """A reward that is 0 for every completion: without a cap each step regenerates 20 whole batches. With a cap
    of 2 batches' worth of tokens the step ends after about 2 retries, with a log line, and drops the group."""
    import logging

    t = trainer(small_rl_setup, tmp_path, algo="dapo", **{"dapo.dynamic_sampling_work": 2.0})
    assert t.dynamic_sampling_retries == 20 and t.dynamic_sampling_work == 2.0
    calls = []

    def zero(completions, **kw):
        calls.append(len(completions))
        return [0.0] * len(completions)

    t.reward_funcs, t.reward_func_names, t.reward_processing_classes = [zero], ["zero"], [None]
    t.reward_weights = torch.ones(1)
    t.model.train()
    with caplog.at_level(logging.WARNING, logger="mpi_kit.rl"):
        out = t._generate_and_score_completions(batch(t, 1))
    assert 2 <= len(calls) <= 4  # the first sample + about 2 batches' worth, not 1 + 20
    assert out["completion_mask"].sum() == 0 and t._metrics["train"]["dynamic_sampling/capped"][-1] == 1.0
    assert "stopped regenerating after" in caplog.text and "left out of this step's loss" in caplog.text
