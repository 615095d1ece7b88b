"""The decode loop (`mpi_kit.decode`): plain `generate`'s greedy tokens (left-padded prompts of different lengths,
images, a LoRA adapter, groups of repeated prompts or none), its sampling distribution, per-row stopping, the RL
trainer's rollouts and evaluation through it, and the same bytes for the same seed."""
import sys
from pathlib import Path

import pytest
import torch

from conftest import hashed_reward  # noqa: F401
from mpi_kit.decode import ROLLOUT_PATHS, LogitsRecipe, decode_generate, rollout_generate, supported

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_rollout  # noqa: E402
from test_rollout import _group_inputs  # noqa: E402

lora_model = test_rollout.lora_model  # the same module-scoped fixture: a small Qwen2.5-VL with an active LoRA


def _rows(x: dict, rows: list[int]) -> dict:
    """The batch `x` (one image per row) with its rows picked/repeated as `rows`."""
    chunks = torch.split(x["pixel_values"], x["image_grid_thw"].prod(-1).tolist())
    out = {k: x[k][rows] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    out["pixel_values"] = torch.cat([chunks[i] for i in rows])
    return out


@pytest.mark.parametrize("rows", [[0, 0, 0, 1, 1, 1], [0, 1], [0, 0, 1, 1, 1]], ids=["groups", "distinct", "uneven"])
def test_greedy_equals_generate(lora_model, rows):
    """Two prompts of different lengths (one left-padded) with images, repeated in equal runs (one cache copy per
    prompt), distinct (evaluation) or uneven runs (one copy per row): the tokens of plain `generate`."""
    model, proc = lora_model
    x = _rows(_group_inputs(proc, 1), rows)
    assert (x["attention_mask"] == 0).any()
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    slow = model.generate(**x, **kw)
    fast = decode_generate(model, **x, **kw)
    assert torch.equal(slow, fast)
    assert slow[0, -12:].tolist() != slow[-1, -12:].tolist()  # the two prompts differ, so the test can fail


def test_sampling_same_seed_same_bytes(lora_model):
    """Sampling with temperature, top-k and top-p: the same seed gives the same bytes, another seed other tokens."""
    model, proc = lora_model
    x = _group_inputs(proc, 3)
    kw = dict(max_new_tokens=10, min_new_tokens=10, do_sample=True, temperature=0.7, top_k=40, top_p=0.9)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(decode_generate(model, **x, **kw))
    assert outs[0].numpy().tobytes() == outs[1].numpy().tobytes()
    assert len({tuple(r) for r in outs[0][:, -10:].tolist()}) > 2  # really sampled
    torch.manual_seed(6)
    assert not torch.equal(decode_generate(model, **x, **kw), outs[0])


@pytest.mark.parametrize("vocab", [5, 50])
def test_sampler_frequencies_on_a_toy_vocabulary(vocab):
    """`sample` (inverse CDF) against the exact softmax over a toy vocabulary, some tokens at -inf (suppressed or
    cut by top-p): those never drawn, the others at their probabilities."""
    from mpi_kit.decode import sample

    g = torch.Generator().manual_seed(vocab)
    row = torch.randn(vocab, generator=g) * 1.5
    row[torch.arange(vocab) % 3 == 1] = float("-inf")
    scores = row.repeat(30000, 1)
    torch.manual_seed(0)
    freq = torch.bincount(sample(scores), minlength=vocab).float() / len(scores)
    p = row.softmax(-1)
    assert len(freq) == vocab and freq[p == 0].sum() == 0
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / len(scores)).sqrt() + 1e-3).all(), (freq, p)
    one_hot = torch.full((3, vocab), float("-inf"))
    one_hot[:, -1] = 0.0  # all the mass on the last token: drawn whatever the uniform
    assert sample(one_hot).tolist() == [vocab - 1] * 3


def test_sampling_distribution_on_a_toy_vocabulary(lora_model):
    """Every token but 6 suppressed (a toy vocabulary), temperature 0.7, top-k 5, top-p 0.9: the first tokens of
    4,000 rows of one prompt are drawn with the frequencies `generate`'s own logits processors give."""
    from transformers.generation.logits_process import (LogitsProcessorList, SuppressTokensLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    model, proc = lora_model
    x = _group_inputs(proc, 1)
    one = {k: v[:1] for k, v in x.items() if k != "pixel_values"}
    one["pixel_values"] = x["pixel_values"][: int(x["image_grid_thw"][0].prod())]
    with torch.no_grad():
        logits = model(**one).logits[:, -1].float()
    vocab = logits.shape[-1]
    toy = logits[0].topk(6).indices.tolist()  # the 6 likeliest: a distribution with mass on several tokens
    suppress = [i for i in range(vocab) if i not in toy]
    ref = LogitsProcessorList([SuppressTokensLogitsProcessor(suppress), TemperatureLogitsWarper(0.7),
                               TopKLogitsWarper(5), TopPLogitsWarper(0.9)])(one["input_ids"], logits)
    p = ref.softmax(-1)[0]
    n = 4000
    batch = {k: v.repeat_interleave(n, 0) for k, v in one.items() if k != "pixel_values"}
    batch["pixel_values"] = one["pixel_values"].repeat(n, 1)
    torch.manual_seed(0)
    out = decode_generate(model, **batch, max_new_tokens=1, do_sample=True, temperature=0.7, top_k=5, top_p=0.9,
                          suppress_tokens=suppress)[:, -1]
    freq = torch.bincount(out, minlength=vocab).float() / n
    assert freq[p == 0].sum() == 0  # nothing outside the top-k / top-p support
    assert (p > 0).sum() >= 2
    tol = 4 * (p * (1 - p) / n).sqrt() + 1e-3
    assert ((freq - p).abs() <= tol).all(), (freq[toy], p[toy])


def test_logits_recipe_matches_generate_processors():
    """The loop's logits processing equals transformers' processors on random logits (order and arithmetic)."""
    from transformers import GenerationConfig
    from transformers.generation.logits_process import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    g = torch.Generator().manual_seed(1)
    scores = torch.randn(5, 11, generator=g) * 3
    gc = GenerationConfig(do_sample=True, temperature=0.6, top_k=7, top_p=0.8, min_new_tokens=2, max_new_tokens=4)
    ours = LogitsRecipe(gc, [3], 11, "cpu")
    for t in (0, 2):
        ids = torch.zeros(5, 4 + t, dtype=torch.long)
        ref = LogitsProcessorList([MinNewTokensLengthLogitsProcessor(4, 2, [3]), TemperatureLogitsWarper(0.6),
                                   TopKLogitsWarper(7), TopPLogitsWarper(0.8)])(ids, scores)
        assert torch.equal(ours(scores, t), ref)


def test_stopping_per_row(lora_model):
    """EOS in one row stops that row (padded after it) but not the others; the output is `generate`'s."""
    model, proc = lora_model
    x = _group_inputs(proc, 2)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    free = decode_generate(model, **x, eos_token_id=None, **kw)[:, -8:]
    # a token that row 0 writes at step 2 and the last row never writes: EOS for this run
    eos = next(tok for tok in free[0, 1:4].tolist() if tok not in free[-1].tolist() and tok != 0)
    stop = free[0].tolist().index(eos)
    fast = decode_generate(model, **x, eos_token_id=eos, **kw)
    assert torch.equal(fast, model.generate(**x, eos_token_id=eos, **kw))
    new = fast[:, -8:] if fast.shape[1] - x["input_ids"].shape[1] == 8 else None
    assert new is not None  # the last row kept going to the end
    assert new[0, stop] == eos and (new[0, stop + 1:] == 0).all()
    assert torch.equal(new[-1], free[-1])


def test_unsupported_settings_fall_back(lora_model):
    """Settings the loop does not implement (here a repetition penalty) go to the shared-prefill path unchanged."""
    model, proc = lora_model
    assert supported(model, None, {"max_new_tokens": 4})
    assert not supported(model, None, {"max_new_tokens": 4, "repetition_penalty": 1.3})
    x = _group_inputs(proc, 2)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, repetition_penalty=1.3)
    assert torch.equal(decode_generate(model, **x, **kw), model.generate(**x, **kw))
    with pytest.raises(ValueError, match="fast_rollouts"):
        rollout_generate(model, "fastest")
    assert ROLLOUT_PATHS[True] == "decode" and ROLLOUT_PATHS["shared"] == "shared"


def test_rl_trainer_paths_same_greedy_completions_and_a_step(small_rl_setup, tmp_path):
    """PoRo through TRL with plain `generate`, the shared-prefill path and the decode loop: the same greedy
    completions; then a full training step runs on the decode loop."""
    from mpi_kit.rl import rl_trainer

    root, base = small_rl_setup
    cfg = {"grpo.max_completion_length": 8, "grpo.per_device_train_batch_size": 4, "grpo.num_generations": 2}
    outs = []
    for path in (False, "shared", True):
        t, _, info = rl_trainer("tiny", root / "data", tmp_path / str(path), "grpo", True, model=base, max_steps=1,
                                fast_rollouts=path, **cfg)
        assert t.fast_rollouts == path == info["fast_rollouts"]
        t.generation_config.do_sample = False
        t.generation_kwargs["do_sample"] = False
        rows = [dict(t.train_dataset[0]) for _ in range(t.num_generations)]
        t.model.eval()
        outs.append(t._generate_and_score_completions(rows)["completion_ids"])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    t.model.train()
    t.generation_config.do_sample = True
    t.generation_kwargs["do_sample"] = True
    assert t.train().global_step == 1


def test_evaluation_uses_the_decode_loop(small_rl_setup, monkeypatch):
    """`generate_completions` decodes through `decode_generate` (same greedy text as plain `generate`)."""
    import mpi_kit.decode as decode
    from mpi_kit.data import load_kit_data
    from mpi_kit.generation import generate_completions
    from mpi_kit.models import load_model

    root, base = small_rl_setup
    model, proc = load_model(base)
    model.eval()
    rows = list(load_kit_data(root / "data", "rl")["train"].select(range(3)))
    calls = []
    real = decode.decode_generate
    monkeypatch.setattr(decode, "decode_generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = generate_completions(model, proc, rows, max_new_tokens=6, batch_size=3)
    assert calls
    assert fast == generate_completions(model, proc, rows, max_new_tokens=6, batch_size=3, fast=False)


def test_fused_projections_on_a_plain_model(tmp_path, lora_model):
    """A model without adapters decodes with q/k/v and gate/up each in one matmul (`fused_weights`): `generate`'s
    greedy tokens (two prompts with images, one left-padded, in runs of 3); a LoRA model keeps its own modules."""
    from mpi_kit.decode import _parts, fused_weights
    from mpi_kit.models import load_model

    test_rollout._build("qwen2_5_vl", tmp_path / "q")
    model, proc = load_model(str(tmp_path / "q"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # varied greedy tokens
    model.eval()
    assert fused_weights(_parts(model)[1]) is not None
    assert fused_weights(_parts(lora_model[0])[1]) is None
    x = _group_inputs(proc, 3)
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    slow = model.generate(**x, **kw)
    assert torch.equal(slow, decode_generate(model, **x, **kw))
    assert slow[0, -12:].tolist() != slow[-1, -12:].tolist()
