"""TriMPI stages 1-2 on a ~0.2M-parameter random Qwen2.5-VL (tiny architecture, smaller dims, tokenizer trained on
the test data): VM-CPT labels every text token and no visual token, SFT labels the completion only, a few steps
lower the loss and move only the trained weights, a stopped run resumes to the uninterrupted result, the CLI runs
under a 2-process `accelerate launch`, and bad inputs fail with clear errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SMALL, interrupted_then_resumed
from mpi_kit.cli import main
from mpi_kit.cpt import VMCPTCollator, check_vmcpt, run_cpt
from mpi_kit.models import vision_token_ids
from mpi_kit.data import DataError, load_kit_data
from mpi_kit.tasks.clevr.data import build_datasets
from mpi_kit.models import load_model
from mpi_kit.sft import run_sft, sft_trainer
from mpi_kit.training import StageError, load_stage_model, stage_recipe

FAST = {"vm_cpt.per_device_train_batch_size": 2, "sft_cot.per_device_train_batch_size": 2,
        "sft_direct.per_device_train_batch_size": 2}
ROOT = Path(__file__).resolve().parent.parent


def _texts(msgs):
    return "".join(p["text"] or "" for m in msgs for p in m["content"] if p["type"] == "text")


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("stages")
    t = build_datasets(out=str(root / "T"), num_policies=2, num_scenes=8, depth=2, progress=False)
    m = build_datasets(out=str(root / "M"), num_policies=1, num_scenes=4, depth=2, variant="M", progress=False,
                       kinds=("vmcpt",))
    assert t["datasets"]["vmcpt"]["train"] and m["datasets"]["vmcpt"]["train"]
    return {"T": str(root / "T"), "M": str(root / "M"), "root": root}


@pytest.fixture(scope="session")
def base(data):
    """A random tiny-architecture checkpoint (tokenizer trained on the test data), saved like assets/tiny-vlm."""
    from mpi_kit.tiny import build_tiny, save_tiny

    texts = []
    for v in ("T", "M"):
        for r in load_kit_data(data[v], "vmcpt")["train"]:
            texts.append(_texts(r["prompt"]) + _texts(r["completion"]))
    model, processor = build_tiny(texts * 4, dims=SMALL)
    return str(save_tiny(model, processor, data["root"] / "base"))


@pytest.fixture(scope="session")
def processor(base):
    return load_model("tiny", model=base)[1]


def _run(fn, *a, **kw):
    return fn("tiny", *a, **{**FAST, **kw})


# --------------------------------------------------------------------------------------------------- labels

@pytest.mark.parametrize("variant", ["T", "M"])
def test_vmcpt_labels_every_text_token_and_no_visual_token(data, processor, variant):
    rows = [load_kit_data(data[variant], "vmcpt")["train"][i] for i in range(3)]
    batch = VMCPTCollator(processor)(rows)
    ids, labels, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
    visual = torch.isin(ids, torch.tensor(vision_token_ids(processor)))
    tok = processor.tokenizer
    assert (labels[visual] == -100).all() and (labels[att == 0] == -100).all()
    text = (att == 1) & ~visual
    assert torch.equal(labels[text], ids[text])  # every text token, policy and template included, carries loss
    for i, row in enumerate(rows):
        n_img = len(row["images"])
        assert (ids[i] == tok.convert_tokens_to_ids("<|vision_start|>")).sum() == n_img
        assert n_img == (len(row["policy_images"]) + 1) and (n_img > 1) == (variant == "M")
        learned = tok.decode(labels[i][labels[i] != -100])
        for part in row["policy"]:  # the whole policy text is under the loss, each piece in order
            if part["type"] == "text":
                assert part["text"] in learned
        assert _texts(row["completion"]) in learned and row["policy_name"] in learned
        assert "<|image_pad|>" not in learned and "<|vision_start|>" not in learned


@pytest.mark.parametrize("mode", ["cot", "direct"])
def test_sft_labels_only_the_completion(data, base, tmp_path, mode):
    trainer, processor, _ = sft_trainer("tiny", data["T"], tmp_path, mode, model=base)
    rows = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(rows)  # SFTTrainer's own collator, as training sees it
    ids, labels = batch["input_ids"], batch["labels"]
    assert (labels[torch.isin(ids, torch.tensor(vision_token_ids(processor)))] == -100).all()
    for i, row in enumerate(rows):
        learned = processor.tokenizer.decode(labels[i][labels[i] != -100])
        assert learned == _texts(row["completion"]) + "<|im_end|>\n"
        assert ("<think>" in learned) == (mode == "cot") and "\\boxed{Case" in learned
        assert "# Condition" not in processor.tokenizer.decode(ids[i])  # no policy in the SFT input


# ------------------------------------------------------------------------------------------------- training

def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_vmcpt_lowers_loss_and_trains_only_the_language_model(data, base, tmp_path):
    before = _state(load_model("tiny", model=base)[0])
    s = _run(run_cpt, data["T"], tmp_path / "cpt", model=base, max_steps=6, **{"vm_cpt.learning_rate": 1e-3})
    assert s["completed"] and s["steps"] == 6 and len(s["loss"]) == 6
    assert s["loss"][-1]["loss"] < s["loss"][0]["loss"]
    assert s["params"]["trainable"] < s["params"]["total"] and s["vision_frozen_params"] > 0
    summary = json.loads((tmp_path / "cpt" / "summary.json").read_text())
    assert summary["final_loss"] == s["final_loss"] and summary["peak_memory_gib"] > 0
    written = json.loads((tmp_path / "cpt" / "mpi_recipe.json").read_text())  # the recipe the stage was given
    assert summary["stage"] == "vm_cpt" and summary["recipe"] == written["name"] == "tiny"
    assert written["vm_cpt"]["learning_rate"] == 1e-3 and written["model"] == base
    after = _state(load_model(str(tmp_path / "cpt"))[0])  # the final model loads back by folder
    vision = [k for k in before if k.startswith("model.visual.")]
    lm = [k for k in before if k.startswith("model.language_model.layers.")]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert all(not torch.equal(before[k], after[k]) for k in lm if k.endswith("q_proj.weight"))


def test_lora_sft_from_vmcpt_trains_only_the_adapter(data, base, tmp_path):
    cpt = tmp_path / "cpt"
    _run(run_cpt, data["T"], cpt, model=base, max_steps=2)
    start = _state(load_model(str(cpt))[0])
    lora = {"lora.enabled": True, "lora.r": 8, "sft_cot.learning_rate": 1e-3}
    s = _run(run_sft, data["T"], tmp_path / "sft", "cot", model=base, init=str(cpt), max_steps=4, **lora)
    assert s["init"] == str(cpt) and s["loss"][-1]["loss"] < s["loss"][0]["loss"]
    assert s["params"]["trainable"] < 0.2 * s["params"]["total"]
    out = tmp_path / "sft"
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    recipe = stage_recipe("tiny", str(out), **lora)
    assert recipe.model == str(cpt)  # an adapter continues on its own base (the VM-CPT model)
    model, _ = load_stage_model(recipe, str(out), trainable=False)
    merged = _state(model.merge_and_unload())
    changed = [k for k in start if not torch.equal(start[k], merged[k])]
    assert changed and all(".language_model." in k and k.endswith(("proj.weight",)) for k in changed)
    assert not any(k.startswith("model.visual.") for k in changed)  # vision tower never touched


@pytest.mark.parametrize("stage", ["cpt", "sft-lora"])
def test_interrupted_then_resumed_equals_uninterrupted(data, base, tmp_path, stage):
    """Full fine-tune (VM-CPT) and LoRA (Direct SFT): a run stopped at step 2 and rerun into the same folder ends
    with the same loss curve and weights as one uninterrupted run."""
    if stage == "cpt":
        def run(out, **kw):
            return _run(run_cpt, data["T"], out, model=base, max_steps=5, save_steps=10, **kw)
    else:
        def run(out, **kw):
            return _run(run_sft, data["T"], out, "direct", model=base, max_steps=5, save_steps=10,
                        **{"lora.enabled": True, "sft_direct.learning_rate": 1e-3}, **kw)
    full, resumed = interrupted_then_resumed(run, tmp_path)
    if stage == "cpt":
        a = _state(load_model(str(tmp_path / "full"))[0])
        b = _state(load_model(str(tmp_path / "resumed"))[0])
    else:
        from safetensors.torch import load_file
        a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("full", "resumed"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_cli_runs_under_accelerate_with_two_processes(data, base, tmp_path):
    """`accelerate launch --num_processes 2 --cpu` starts ONE process (accelerate's multi-CPU path needs mpirun);
    `--multi_gpu --num_processes 2` on a CPU-only machine runs torchrun + gloo DDP, two real processes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mpi_kit", "sft",
           "--recipe", base, "--data", data["T"], "--out", str(out), "--mode", "direct", "--max-steps", "2",
           "--set", "sft_direct.per_device_train_batch_size=2"]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 2 and (out / "model.safetensors").exists()
    assert r.stdout.count('"stage"') == 1  # one report, from the main process


# ------------------------------------------------------------------------------------------------ bad inputs

def test_policy_replay_shows_a_share_of_cot_rows_with_their_policy(data, base):
    """sft_cot.policy_replay: that share of CoT SFT rows become their VM-CPT twins (policy in the prompt, the same
    CoT to learn), the same rows every time; 0 leaves the paper's CoT SFT; Direct SFT and shares >= 1 are refused."""
    from mpi_kit.recipes import RecipeError

    cot = load_kit_data(data["T"], "cot")["train"]
    trainer, _, _ = _run(sft_trainer, data["T"], None, "cot", model=base, **{"sft_cot.policy_replay": 0.5})
    ds = trainer.train_dataset
    shown = ["# Condition" in _texts(r["prompt"]) for r in ds]
    assert 0 < sum(shown) < len(ds) == len(cot)
    assert [_texts(r["completion"]) for r in ds] == [_texts(r["completion"]) for r in cot]  # same CoTs, same order
    again, _, _ = _run(sft_trainer, data["T"], None, "cot", model=base, **{"sft_cot.policy_replay": 0.5})
    assert ["# Condition" in _texts(r["prompt"]) for r in again.train_dataset] == shown
    plain, _, _ = _run(sft_trainer, data["T"], None, "cot", model=base)
    assert not any("# Condition" in _texts(r["prompt"]) for r in plain.train_dataset)
    with pytest.raises(DataError, match="policy_replay is for CoT SFT"):
        _run(sft_trainer, data["T"], None, "direct", model=base, **{"sft_direct.policy_replay": 0.5})
    with pytest.raises(RecipeError, match=r"policy_replay: must be in \[0, 1\)"):
        _run(sft_trainer, data["T"], None, "cot", model=base, **{"sft_cot.policy_replay": 1.0})


def test_bad_inputs_get_clear_errors(data, base, tmp_path):
    vm = load_kit_data(data["T"], "vmcpt")["train"]
    with pytest.raises(DataError, match=r"lacks column\(s\) \['images'\]"):
        check_vmcpt(vm.remove_columns("images"))
    with pytest.raises(DataError, match="empty"):
        check_vmcpt(vm.select([]))
    with pytest.raises(DataError, match="empty"):
        empty = load_kit_data(data["T"], "cot")["train"].select([])
        _run(run_sft, data["T"], tmp_path / "e", "cot", model=base, dataset=empty)

    def strip_name(r):  # a policy document without its 'Policy: <name>' header
        c = r["prompt"][0]["content"]
        c[0] = {**c[0], "text": c[0]["text"].replace(f"Policy: {r['policy_name']}\n\n", "")}
        return r
    with pytest.raises(DataError, match=r"no policy document stating its name \('Policy: "):
        check_vmcpt(vm.map(strip_name))
    nameless = vm.map(lambda r: {**r, "policy_name": "", "prompt": [{**r["prompt"][0], "content": [
        {**p, "text": (p["text"] or "").replace("Policy: ", "policy ") if p["type"] == "text" else None}
        for p in r["prompt"][0]["content"]]}]})
    with pytest.raises(DataError, match="no policy name"):
        check_vmcpt(nameless)
    with pytest.raises(DataError, match="no policy document"):  # CoT rows passed as VM-CPT data
        check_vmcpt(load_kit_data(data["T"], "cot")["train"])
    with pytest.raises(DataError, match="policy in its prompt"):
        _run(run_sft, data["T"], tmp_path / "v", "cot", model=base, dataset=vm)
    with pytest.raises(DataError, match="image placeholder"):
        check_vmcpt(vm.map(lambda r: {**r, "images": r["images"] * 2}))
    with pytest.raises(DataError, match="mode must be one of"):
        _run(run_sft, data["T"], tmp_path / "m", "chat", model=base)
    with pytest.raises(StageError, match="neither a model"):
        _run(run_sft, data["T"], tmp_path / "i", "cot", model=base, init=str(tmp_path))


def test_cli_errors_exit_2(data, tmp_path, capsys):
    assert main(["cpt", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no vmcpt dataset" in capsys.readouterr().err
    assert main(["sft", "--data", data["T"], "--out", str(tmp_path / "o"), "--set", "sft_cot.lr=1"]) == 2
    assert "unknown" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- reruns and run folders

def test_rerun_of_a_finished_stage_reuses_it_and_other_settings_are_refused(data, base, tmp_path):
    """A finished stage rerun with the same settings trains nothing and rewrites nothing; another mode or step
    count into the same folder is refused with a message naming the difference and the way out."""
    out = tmp_path / "cot"
    first = _run(run_sft, data["T"], out, "cot", model=base, max_steps=3, save_steps=1)
    files = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = _run(run_sft, data["T"], out, "cot", model=base, max_steps=3, save_steps=1)
    assert again["reused"] and again["steps"] == first["steps"] == 3
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    with pytest.raises(StageError, match=r'stage: "sft_cot" there, "sft_direct" asked.*new --out.*delete'):
        _run(run_sft, data["T"], out, "direct", model=base, max_steps=3, save_steps=1)
    with pytest.raises(StageError, match=r"max_steps: 3 there, 2 asked"):
        _run(run_sft, data["T"], out, "cot", model=base, max_steps=2, save_steps=1)
    assert main(["sft", "--recipe", base, "--data", data["T"], "--out", str(out), "--mode", "direct"]) == 2
    assert json.loads((out / "summary.json").read_text())["stage"] == "sft_cot"  # nothing was overwritten


def test_incomplete_checkpoint_is_skipped_on_resume(data, base, tmp_path):
    """A kill during a checkpoint write leaves an empty or truncated checkpoint; the rerun warns, resumes from
    the last complete one and ends like an uninterrupted run."""
    from conftest import StopAt

    out = tmp_path / "run"

    def run(**kw):
        return _run(run_cpt, data["T"], out, model=base, max_steps=4, save_steps=2, **kw)
    stopped = run(callbacks=[StopAt(2)])
    assert stopped["steps"] == 2
    (out / "checkpoint-3").mkdir()  # a SIGKILL right after the folder was made
    with open(out / "checkpoint-2" / "optimizer.pt", "rb") as f:
        head = f.read(200)
    ckpt4 = out / "checkpoint-4"
    import shutil
    shutil.copytree(out / "checkpoint-2", ckpt4)
    (ckpt4 / "optimizer.pt").write_bytes(head)  # a full disk cut the optimizer state short
    with pytest.warns(UserWarning, match=r"skipping incomplete checkpoint .*checkpoint-4 \(optimizer.pt is truncated"):
        done = run()
    assert done["resumed_from"].endswith("checkpoint-2") and done["completed"] and done["steps"] == 4


def test_train_loss_after_resume_is_the_whole_runs(data, base, tmp_path):
    def run(out, **kw):
        return _run(run_cpt, data["T"], out, model=base, max_steps=4, save_steps=10, **kw)
    full, resumed = interrupted_then_resumed(run, tmp_path)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-3)


def test_run_folder_problems_are_stated_before_the_model_loads(data, base, tmp_path, monkeypatch):
    import mpi_kit.training as training

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the folder was checked")
    monkeypatch.setattr(training, "load_model", no_load)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StageError, match="is a file; pass a folder"):
        _run(run_cpt, data["T"], tmp_path / "file", model=base, max_steps=1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: make the write itself fail instead
            real = Path.write_text
            monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: (_ for _ in ()).throw(
                PermissionError(13, "Permission denied")) if self.parent == ro else real(self, *a, **k))
        with pytest.raises(StageError, match="cannot write to --out .*Permission denied"):
            _run(run_cpt, data["T"], ro, model=base, max_steps=1)
    finally:
        ro.chmod(0o700)
    with pytest.raises(StageError, match="max_steps must be >= 1, got 0"):
        _run(run_cpt, data["T"], tmp_path / "z", model=base, max_steps=0)
    with pytest.raises(StageError, match="max_steps must be >= 1, got -5"):
        _run(run_cpt, data["T"], tmp_path / "n", model=base, max_steps=-5)


def test_half_saved_stage_is_refused_as_init(data, base, tmp_path):
    from conftest import StopAt

    half = tmp_path / "half"
    _run(run_cpt, data["T"], half, model=base, max_steps=4, save_steps=2, callbacks=[StopAt(2)])
    (half / "model.safetensors").unlink(missing_ok=True)
    (half / "config.json").write_text("{}")  # a config was written, the weights were not
    with pytest.raises(StageError, match="no weights.*did not finish saving"):
        _run(run_sft, data["T"], tmp_path / "s", "cot", model=base, init=str(half))
    stopped = tmp_path / "stopped"
    _run(run_cpt, data["T"], stopped, model=base, max_steps=4, save_steps=2, callbacks=[StopAt(2)])
    with pytest.raises(StageError, match="has not finished"):
        _run(run_sft, data["T"], tmp_path / "s2", "cot", model=base, init=str(stopped))


def test_disk_full_says_so(data, base, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import mpi_kit.training as training

    def full(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")
    monkeypatch.setattr(training, "_train_stage", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(1, 1, 0))
    with pytest.raises(StageError, match="the disk is full.*Free some space and rerun"):
        _run(run_cpt, data["T"], tmp_path / "d", model=base, max_steps=1)


def test_one_stage_registry_names_every_stage_everywhere():
    """Training, the memory planner, the pipeline and the summaries read one registry (`mpi_kit.stages`)."""
    from mpi_kit import memory
    from mpi_kit.pipeline import STEPS
    from mpi_kit.recipes import get_recipe
    from mpi_kit.rl import ALGOS
    from mpi_kit.stages import PHASES, STAGES, rl_stage, sft_stage

    recipe = get_recipe("tiny")
    assert all(hasattr(recipe, s.section) for s in STAGES.values())  # every stage's hyperparameters exist
    assert {stage for stage, _ in STEPS.values()} <= set(STAGES)  # a pipeline step trains a registered stage
    assert {p for _, p in STEPS.values()} - {None} <= set(STEPS)
    assert memory.STAGES == PHASES == ("vm_cpt", "sft", "rl_generation", "rl_update")
    assert memory.SECTIONS == {"vm_cpt": "vm_cpt", "sft": "sft_cot", "rl_generation": "grpo", "rl_update": "grpo"}
    assert ALGOS == ("grpo", "dapo") and rl_stage("dapo", True).name == "poro_dapo"
    assert sft_stage("direct").data == "qa" and sft_stage("cot").name == "sft_cot"
    with pytest.raises(DataError, match="cot, direct"):
        sft_stage("reverse")
    with pytest.raises(ValueError, match="grpo"):
        rl_stage("ppo")
