import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib

import pytest
from transformers import TrainerCallback

# A ~0.2M-parameter model of the tiny architecture: the stage tests learn mechanics on it in seconds.
SMALL = dict(vocab_size=512, hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, vit_hidden=32, vit_depth=2,
             vit_heads=2, vit_mlp=64)


def message_text(rows) -> list[str]:
    return ["".join(p["text"] or "" for m in r["prompt"] + r["completion"] for p in m["content"]) for r in rows]


@pytest.fixture(scope="session")
def small_rl_setup(tmp_path_factory):
    """(root, base): N=2 rl + vmcpt data under root/data and a random SMALL model (tokenizer trained on that data)."""
    import torch

    from mpi_kit.tasks.clevr.data import build_datasets
    from mpi_kit.data import load_kit_data
    from mpi_kit.tiny import build_tiny, save_tiny

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("small-rl")
    build_datasets(out=str(root / "data"), num_policies=2, num_scenes=6, depth=2, progress=False,
                   kinds=("rl", "vmcpt"))
    model, processor = build_tiny(message_text(load_kit_data(root / "data", "vmcpt")["train"]) * 4, dims=SMALL)
    return root, str(save_tiny(model, processor, root / "base"))


def hashed_reward(completions, **kw):
    """Deterministic, varied rewards (so groups have signal and the weights move) from the completion text."""
    return [int(hashlib.md5(c[-1]["content"].encode()).hexdigest(), 16) % 5 / 4 for c in completions]


class StopAt(TrainerCallback):
    """Simulate an interruption: stop (after a checkpoint) at step k."""

    def __init__(self, k):
        self.k = k

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.k:
            control.should_save = True
            control.should_training_stop = True


def interrupted_then_resumed(run, tmp_path):
    """Run to the end in one folder; in another, stop at step 2 and rerun. Returns (full, resumed) summaries after
    checking the resume happened and the loss curves agree."""
    full = run(tmp_path / "full")
    stopped = run(tmp_path / "resumed", callbacks=[StopAt(2)])
    assert stopped["steps"] == 2 and not stopped["completed"]
    resumed = run(tmp_path / "resumed")
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["completed"]
    assert [p["loss"] for p in resumed["loss"]] == pytest.approx([p["loss"] for p in full["loss"]], abs=1e-6)
    return full, resumed
