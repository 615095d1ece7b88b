"""The paper's regime: CoT SFT as LoRA alone, merged before RL; in RL every arm samples the same prompts per rollout
batch (only the group differs), and a rollout batch updated in several optimizer steps moves the policy between
them, so the clip acts."""
import pytest
import torch

from conftest import hashed_reward
from mpi_kit.rl import rl_trainer, run_rl
from mpi_kit.training import StageError

RL = {"grpo.max_completion_length": 8, "grpo.rollout_prompts": 2, "grpo.updates_per_rollout": 2}


@pytest.mark.parametrize("poro, G, group", [(False, 2, 2), (False, 4, 4), (True, 2, 4)])  # GRPO, GRPO-2G, PoRo
def test_every_arm_samples_the_same_prompts_per_rollout_batch(small_rl_setup, tmp_path, poro, G, group):
    root, base = small_rl_setup
    t, _, _ = rl_trainer("tiny", root / "data", tmp_path / "out", "grpo", poro, model=base, max_steps=2,
                         num_generations=G, **RL)
    args = t.args
    assert t.num_generations == group
    assert args.generation_batch_size // group == 2  # prompts per rollout batch: equal for every arm
    assert args.steps_per_generation // args.gradient_accumulation_steps == 2  # optimizer steps per rollout batch


def test_batches_that_do_not_split_are_refused(small_rl_setup, tmp_path):
    root, base = small_rl_setup
    with pytest.raises(StageError, match="do not split into"):
        rl_trainer("tiny", root / "data", tmp_path / "out", "grpo", False, model=base, num_generations=3,
                   **{**RL, "grpo.rollout_prompts": 1})


def test_the_clip_acts_only_when_a_rollout_batch_is_updated_more_than_once(small_rl_setup, tmp_path):
    root, base = small_rl_setup
    torch.manual_seed(0)

    def run(name, updates):
        return run_rl("tiny", root / "data", tmp_path / name, "grpo", True, model=base, max_steps=4,
                      num_generations=2, reward_funcs=[hashed_reward], reward_weights=[1.0],
                      **{**RL, "grpo.updates_per_rollout": updates, "grpo.learning_rate": 3e-2, "grpo.beta": 0.0})

    once = run("once", 1)
    twice = run("twice", 2)
    assert once["clipped"] and all(c["share"] == 0 for c in once["clipped"])  # ratio 1: nothing to clip
    assert any(c["share"] > 0 for c in twice["clipped"][1::2])  # the second update of each rollout batch


def test_cot_sft_as_lora_alone_is_merged_into_full_weights_for_rl(small_rl_setup, tmp_path):
    from safetensors.torch import load_file

    from mpi_kit.models import load_model
    from mpi_kit.sft import run_sft

    from mpi_kit.tasks.clevr.data import build_datasets

    _, base = small_rl_setup
    build_datasets(out=str(tmp_path / "d"), num_policies=2, num_scenes=6, depth=2, progress=False, kinds=("cot",))
    out = tmp_path / "sft"
    s = run_sft("tiny", tmp_path / "d", out, "cot", model=base, max_steps=2,
                **{"sft_cot.lora_r": 4, "sft_cot.learning_rate": 1e-2})
    assert s["merge_lora"] and not (out / "adapter_config.json").exists()
    before, after = load_file(f"{base}/model.safetensors"), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()  # full weights, no adapter keys
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("visual" not in k for k in changed)  # the language model moved, the vision tower not
    model, _ = load_model(str(out))
    assert not hasattr(model, "peft_config")  # RL starts from it as a plain full model
