"""The training side of an RL step with each shared prompt run once (`mpi_kit.logprobs`): the same per-token
log-probs, entropies and gradients as TRL's row-by-row forward, on a PoRo batch (two prompts with images, completions
of different lengths) and on a LoRA model; calls it does not handle go to TRL."""
import sys
from pathlib import Path

import pytest
import torch
from trl import GRPOTrainer

from conftest import hashed_reward  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_rollout  # noqa: E402
from test_rollout import _group_inputs  # noqa: E402

lora_model = test_rollout.lora_model


def _poro_batch(small_rl_setup, tmp_path, path="decode"):
    """A PoRo trainer on the decode path and one generated batch: 2 prompts x 2G = 4 rows, sampled."""
    from mpi_kit.rl import rl_trainer

    root, base = small_rl_setup
    cfg = {"grpo.max_completion_length": 10, "grpo.per_device_train_batch_size": 8, "grpo.num_generations": 4}
    t = rl_trainer("tiny", root / "data", tmp_path / str(path), "grpo", True, model=base, max_steps=1,
                   fast_rollouts=path, **cfg)[0]
    rows = [dict(t.train_dataset[i]) for i in (0, 1) for _ in range(t.num_generations)]
    torch.manual_seed(0)
    t.model.eval()
    out = t._generate_and_score_completions(rows)
    t.model.train()
    return t, out


def _call(trainer, fn, out, model=None):
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    return fn(model or trainer.model, input_ids, mask, out["completion_ids"].size(1), compute_entropy=True,
              pixel_values=out.get("pixel_values"), image_grid_thw=out.get("image_grid_thw"),
              num_images=out.get("num_images"), mm_token_type_ids=out.get("mm_token_type_ids"),
              pixel_attention_mask=None, token_type_ids=None)


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_shared_prompt_logps_equal_trls_row_by_row(small_rl_setup, tmp_path):
    t, out = _poro_batch(small_rl_setup, tmp_path)
    mask = out["completion_mask"].bool()
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) > 1  # completions of different lengths: padding is exercised
    pixels = torch.split(out["pixel_values"], out["image_grid_thw"].prod(-1).tolist())
    assert not torch.equal(pixels[0], pixels[-1])  # two different prompts (their scenes differ)
    calls = []
    import mpi_kit.logprobs as lp

    real = lp.shared_prompt_logps
    lp.shared_prompt_logps = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        ours, ent, _ = _call(t, t._get_per_token_logps_and_entropies, out)
    finally:
        lp.shared_prompt_logps = real
    assert calls  # the shared path ran
    theirs, ent_t, _ = _call(t, lambda *a, **k: GRPOTrainer._get_per_token_logps_and_entropies(t, *a, **k), out)
    torch.testing.assert_close(ours[mask], theirs[mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent[mask], ent_t[mask], atol=2e-5, rtol=1e-5)
    g_ours = _grads(t.model, (ours * mask).sum())
    g_theirs = _grads(t.model, (theirs * mask).sum())
    assert g_ours.keys() == g_theirs.keys() and len(g_ours) > 10
    for n in g_ours:
        torch.testing.assert_close(g_ours[n], g_theirs[n], atol=1e-4, rtol=1e-3, msg=n)


def test_shared_prompt_logps_on_a_lora_model(lora_model):
    """A peft-wrapped model, two prompts of different lengths (one left-padded) repeated in runs of 3 and 2."""
    from trl.trainer.utils import selective_log_softmax

    from mpi_kit.logprobs import shared_prompt_logps

    model, proc = lora_model
    x = _group_inputs(proc, 1)
    chunks = torch.split(x["pixel_values"], x["image_grid_thw"].prod(-1).tolist())
    rows = [0, 0, 0, 1, 1]
    torch.manual_seed(1)
    vocab = model.get_base_model().config.text_config.vocab_size
    comp = torch.randint(10, min(200, vocab), (len(rows), 7))
    cfg = model.get_base_model().config
    for special in (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id):
        comp[comp == special] = 10  # plain text completions
    ids = torch.cat([x["input_ids"][rows], comp], 1)
    mask = torch.cat([x["attention_mask"][rows], torch.ones_like(comp)], 1)
    images = {"pixel_values": torch.cat([chunks[i] for i in rows]), "image_grid_thw": x["image_grid_thw"][rows]}
    ours, _ = shared_prompt_logps(model, ids, mask, 7, temperature=0.7, **images)
    types = torch.cat([x["mm_token_type_ids"][rows], torch.zeros_like(comp)], 1)
    logits = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, **images).logits[:, -8:-1].float()
    theirs = selective_log_softmax(logits / 0.7, comp)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["shared", False, "decode, switched off"])
def test_other_rollout_paths_keep_trls_forward(small_rl_setup, tmp_path, path, monkeypatch):
    """The shared-prefill and plain rollouts, and the decode loop with `shared_prompt_logps=False` (the benchmark's
    baseline), keep TRL's row-by-row forward."""
    import mpi_kit.logprobs as lp

    t, out = _poro_batch(small_rl_setup, tmp_path, "decode" if path == "decode, switched off" else path)
    if path == "decode, switched off":
        t.shared_prompt_logps = False
    monkeypatch.setattr(lp, "shared_prompt_logps", lambda *a, **k: pytest.fail("shared path used"))
    _call(t, t._get_per_token_logps_and_entropies, out)
