"""The memory planner: predictions against allocator measurements, micro-batch choice under a budget, refusals
that say what would fit, and the recipes' default (qwen2.5-vl-3b plans for 15 GiB; tiny does not plan)."""
import sys
from pathlib import Path

import pytest
import torch

from mpi_kit.memory import MemoryPlanError, Workload, model_config, model_shape, plan, predict
from mpi_kit.recipes import get_recipe
from mpi_kit.training import trainer_kwargs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_gpu import REDUCED, build_checkpoint  # noqa: E402
from memory_harness import measure_peak, run_stage  # noqa: E402

TOLERANCE = 0.15  # predicted / measured peak within 15% (measured 0.89-1.07 over the shapes below)


@pytest.fixture(scope="module")
def small_qlora(tmp_path_factory):
    """The qwen2.5-vl-3b recipe (NF4, LoRA r=16, checkpointing) on a reduced Qwen2.5-VL; fp32 compute (CPU)."""
    from mpi_kit.models import load_model

    torch.set_num_threads(1)
    path = build_checkpoint(tmp_path_factory.mktemp("mem") / "ckpt", REDUCED)
    recipe = get_recipe("qwen2.5-vl-3b", model=path, precision="fp32", device="cpu")
    model, _ = load_model(recipe)
    return model, recipe


@pytest.mark.parametrize("stage, micro, policy", [("vm_cpt", 1, 200), ("vm_cpt", 2, 200), ("sft", 4, 200),
                                                  ("rl_update", 4, 200), ("rl_generation", 8, 200)])
def test_prediction_within_tolerance_of_measurement(small_qlora, stage, micro, policy):
    model, recipe = small_qlora
    w = Workload(policy_tokens=policy, image_tokens=16, query_tokens=24, completion_tokens=32, G=2)
    run_stage(model, stage, micro, w, generation_batch=micro)  # warm: lazily built buffers are not the step's
    with measure_peak() as m:
        run_stage(model, stage, micro, w, generation_batch=micro)
    pred = sum(predict(recipe, stage, micro, w, model_shape(model_config(recipe)), generation_batch=micro).values())
    assert abs(pred / m.bytes - 1) <= TOLERANCE, (stage, micro, pred / 2**20, m.bytes / 2**20)


def test_measure_peak_sees_a_transient_allocation():
    with measure_peak() as m0:
        pass
    with measure_peak() as m:
        x = torch.empty(64 * 2**20, dtype=torch.uint8)  # 64 MiB, freed before the block ends
        x.fill_(1)
        del x
    assert 63 <= (m.bytes - m0.bytes) / 2**20 <= 66


def test_smaller_budget_smaller_micro_batch_same_effective_batch():
    big, small = plan("qwen2.5-vl-3b", 40), plan("qwen2.5-vl-3b", 15)
    for stage in ("vm_cpt", "sft", "rl_update"):
        b, s = big.stages[stage], small.stages[stage]
        assert s.micro_batch * s.accumulation == b.micro_batch * b.accumulation == 16
        assert s.peak_gib + 0.6 <= 15
    assert small.stages["sft"].micro_batch < big.stages["sft"].micro_batch
    assert small.stages["vm_cpt"].micro_batch < big.stages["vm_cpt"].micro_batch
    text = str(small)
    assert "budget 15 GiB" in text and "rl_generation" in text and "logits" in text


def test_refusal_names_what_would_fit():
    with pytest.raises(MemoryPlanError, match=r"vm_cpt does not fit in 8 GiB.*policy of at most \d+ tokens.*"
                                              r"card with >= 1[2-9] GiB"):
        plan("qwen2.5-vl-3b", 8)
    with pytest.raises(MemoryPlanError, match=r"rl_generation does not fit.*G=\d"):
        plan("qwen2.5-vl-3b", 12, stages=("rl_generation",), completion_tokens=4096)
    # what it names does fit
    plan("qwen2.5-vl-3b", 15, policy_tokens=1500, completion_tokens=2048, stages=("vm_cpt",))


def test_recipes_use_the_plan_by_default_and_tiny_does_not(tmp_path):
    r3 = get_recipe("qwen2.5-vl-3b")
    assert r3.memory_budget_gib == 15.0
    kw = trainer_kwargs(r3, r3.sft_cot, tmp_path)
    p = plan(r3, stages=("sft",)).stages["sft"]
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (p.micro_batch, p.accumulation)
    assert p.micro_batch * p.accumulation == 16 and p.micro_batch > 1
    rl = trainer_kwargs(r3, r3.grpo, tmp_path)
    assert rl["per_device_train_batch_size"] * rl["gradient_accumulation_steps"] == 16
    assert rl["steps_per_generation"] == rl["gradient_accumulation_steps"]  # one 16-completion generation per step
    tiny = get_recipe("tiny")
    assert tiny.memory_budget_gib == 0
    kw = trainer_kwargs(tiny, tiny.vm_cpt, tmp_path)
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"]) == (8, 1)
    assert "steps_per_generation" not in trainer_kwargs(tiny, tiny.grpo, tmp_path)


def test_no_budget_predicts_peaks_and_keeps_the_recipes_split(tmp_path):
    from mpi_kit.tasks.clevr.data import build_datasets
    from mpi_kit.memory import longest_policy_tokens

    p = plan("tiny")  # memory_budget_gib = 0
    assert p.budget_gib is None and set(p.stages) == {"vm_cpt", "sft", "rl_generation", "rl_update"}
    assert all((sp.micro_batch, sp.accumulation) == (8, 1) and sp.peak_gib > 0 for sp in p.stages.values())
    assert "no budget" in str(p) and "predicted peaks only" in str(p)
    big = plan("qwen2.5-vl-3b", 0, policy_tokens=8000, stages=("vm_cpt",)).stages["vm_cpt"]  # no refusal either
    assert (big.micro_batch, big.accumulation) == (1, 16) and big.needs_gib > 15
    build_datasets(out=str(tmp_path / "d"), num_policies=2, num_scenes=6, depth=2, progress=False, kinds=("vmcpt",))
    assert 50 < longest_policy_tokens("tiny", tmp_path / "d") < 1000
