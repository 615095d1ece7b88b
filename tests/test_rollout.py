"""Fast rollouts (`mpi_kit.rollout`): one prefill per prompt group gives the tokens plain `generate` gives, with
images, left padding and an active LoRA adapter; the same through the RL trainer's `fast_rollouts` flag."""
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import hashed_reward  # noqa: F401
from mpi_kit.rollout import prompt_groups, shared_prefill_generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_models import PROMPT, _build  # noqa: E402


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    from mpi_kit.models import load_model

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("roll") / "q"
    _build("qwen2_5_vl", path)
    model, proc = load_model(str(path), lora=True)
    with torch.no_grad():  # a LoRA adapter that changes the outputs (B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    return model, proc


def _group_inputs(proc, G):
    """Two different prompts and images (different lengths: left padding), each repeated G times like TRL does."""
    ims = [Image.new("RGB", (96, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    b = proc(text=[PROMPT, PROMPT.replace("red cube", "blue sphere is there")], images=ims, return_tensors="pt",
             padding=True, padding_side="left")
    rep = {k: b[k].repeat_interleave(G, 0) for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    chunks = torch.split(b["pixel_values"], b["image_grid_thw"].prod(-1).tolist())
    rep["pixel_values"] = torch.cat([c for c in chunks for _ in range(G)])
    rep["image_grid_thw"] = b["image_grid_thw"].repeat_interleave(G, 0)
    return rep


@pytest.mark.parametrize("static,per_prompt", [(False, False), (True, False), (False, True), (True, True)])
def test_greedy_fast_path_equals_generate(lora_model, static, per_prompt):
    """Batched or per-prompt (unpadded) prefill, dynamic or static cache: plain `generate`'s tokens."""
    model, proc = lora_model
    x = _group_inputs(proc, 3)
    assert (x["attention_mask"] == 0).any()  # one prompt is left-padded, so per-prompt prefill really unpads it
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    slow = model.generate(**x, **kw)
    fast = shared_prefill_generate(model, **x, static=static, per_prompt_prefill=per_prompt, **kw)
    assert torch.equal(slow, fast)
    assert slow[0, -10:].tolist() != slow[3, -10:].tolist()  # the two prompts differ, so the test can fail


def test_sampling_same_seed_same_tokens(lora_model):
    """fp32: the decode batch and the RNG stream are the same, so tokens match (the stated tolerance is a
    roundoff-sized logit difference crossing a sampling boundary, which this short run does not hit)."""
    model, proc = lora_model
    x = _group_inputs(proc, 2)
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=True, temperature=1.0)
    torch.manual_seed(3)
    slow = model.generate(**x, **kw)
    torch.manual_seed(3)
    fast = shared_prefill_generate(model, **x, static=False, **kw)
    assert torch.equal(slow, fast) and len({tuple(r) for r in slow[:, -10:].tolist()}) > 2


def test_prompt_groups_finds_runs():
    ids = torch.tensor([[1, 2], [1, 2], [3, 4], [3, 4], [3, 4], [1, 2]])
    assert prompt_groups(ids, torch.ones_like(ids)) == ([0, 2, 5], [2, 3, 1])


def test_rl_trainer_fast_rollouts_same_completions(small_rl_setup, tmp_path):
    """PoRo through TRL: plain `generate` and the shared-prefill path ("shared") give the same sampled completions
    for the same seed; the decode loop (True; left unset, the recipe's, on for tiny) gives the same bytes twice
    (it samples the same distribution with fewer random numbers: tests/test_decode.py)."""
    from mpi_kit.rl import rl_trainer

    root, base = small_rl_setup
    fast_cfg = {"grpo.max_completion_length": 8, "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2}
    outs = []
    for fast in (False, "shared", True, None):
        t, _, info = rl_trainer("tiny", root / "data", tmp_path / str(fast), "grpo", True, model=base, max_steps=1,
                                fast_rollouts=fast, **fast_cfg)
        assert info["fast_rollouts"] == (True if fast is None else fast) == t.fast_rollouts
        rows = [dict(t.train_dataset[0]) for _ in range(t.num_generations)]
        t.model.eval()
        torch.manual_seed(0)
        outs.append(t._generate_and_score_completions(rows)["completion_ids"])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])


def test_decode_attention_matches_sdpa_with_gqa_and_padding():
    """One query token per row, 4 query heads over 2 KV heads, a left-padding mask: same output as transformers'
    SDPA path (which repeats the cache), to fp32 roundoff; more than one query token falls back to SDPA itself."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from mpi_kit.rollout import decode_attention

    g = torch.Generator().manual_seed(0)
    B, H, Hkv, L, D = 3, 4, 2, 7, 8
    key, value = torch.randn(B, Hkv, L, D, generator=g), torch.randn(B, Hkv, L, D, generator=g)
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    mask[0, ..., :3] = False  # row 0 is left-padded
    module = SimpleNamespace(num_key_value_groups=H // Hkv, is_causal=True)
    q1 = torch.randn(B, H, 1, D, generator=g)
    ours, _ = decode_attention(module, q1, key, value, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q1, key, value, mask, scaling=0.3)
    assert ours.shape == ref.shape == (B, 1, H, D)
    assert torch.allclose(ours, ref, atol=1e-6)
    unmasked, _ = decode_attention(module, q1, key, value, None, scaling=0.3)
    assert not torch.allclose(unmasked[0], ref[0], atol=1e-3)  # the mask mattered: the test can fail
    q3 = torch.randn(B, H, 3, D, generator=g)
    mask3 = mask.expand(B, 1, 3, L).clone()
    assert torch.equal(decode_attention(module, q3, key, value, mask3)[0],
                       sdpa_attention_forward(module, q3, key, value, mask3)[0])


def test_grouped_decode_attention_restores_the_model(lora_model):
    from mpi_kit.rollout import DECODE_ATTENTION, grouped_decode_attention

    model, _ = lora_model
    text = model.config.get_text_config(decoder=True)
    assert text._attn_implementation == "sdpa"
    with grouped_decode_attention(model):
        assert text._attn_implementation == DECODE_ATTENTION
        assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower is left alone
    assert text._attn_implementation == "sdpa"
