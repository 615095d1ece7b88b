"""Policy distillation on a ~0.2M-parameter random Qwen2.5-VL: the KL is 0 when teacher and student read the same
prompt, only completion tokens carry loss (never the policy, the prompt or an image token), LoRA's adapter-off
teacher is the base model, a short run moves the student and writes its summary, and the pipeline runs the method."""
import json

import pytest
import torch

from conftest import SMALL, message_text
from mpi_kit.data import DataError, load_kit_data
from mpi_kit.tasks.clevr.data import build_datasets
from mpi_kit.distill import (completion_logits, distill_data, distill_trainer, encode, policy_kl, run_distill)
from mpi_kit.models import load_model, vision_token_ids
from mpi_kit.training import StageError

FAST = {"distill.per_device_train_batch_size": 2, "distill.max_completion_length": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data folder, base model folder): N=2 rl + cot + vmcpt rows and a random SMALL model."""
    from mpi_kit.tiny import build_tiny, save_tiny

    root = tmp_path_factory.mktemp("distill")
    build_datasets(out=str(root / "data"), num_policies=2, num_scenes=6, depth=2, progress=False,
                   kinds=("rl", "cot", "vmcpt"))
    model, processor = build_tiny(message_text(load_kit_data(root / "data", "vmcpt")["train"]) * 4, dims=SMALL)
    return str(root / "data"), str(save_tiny(model, processor, root / "base"))


def _trainer(setup, tmp_path, **kw):
    data, base = setup
    return distill_trainer("tiny", data, tmp_path / "out", model=base, max_steps=2, **{**FAST, **kw})[0]


def _rows(t, n=2):
    return [t.train_dataset[i] for i in range(n)]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_policy_kl_is_the_kl_and_zero_for_the_same_prompt(setup, tmp_path):
    t_logits, s_logits = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float)
    expected = torch.nn.functional.kl_div(s_logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True,
                                          reduction="none").sum(-1)
    assert policy_kl(t_logits, s_logits, mask) == pytest.approx(float((expected * mask).sum() / 8), rel=1e-5)
    assert policy_kl(t_logits, t_logits, mask) == pytest.approx(0.0, abs=1e-7)
    t = _trainer(setup, tmp_path)
    rows = _rows(t)
    completions = t.completions(rows)  # written by the teacher, policy in context
    same = t.distill_loss(t.model, rows, completions, teacher_sees_policy=False)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # the student still is the teacher: nothing to learn
    assert t.distill_loss(t.model, rows, completions).item() > 1e-6  # the policy is what the student must learn


@pytest.mark.parametrize("source", ["teacher", "cot"])
def test_only_completion_tokens_carry_loss(setup, tmp_path, source):
    t = _trainer(setup, tmp_path, source=source)
    proc, rows = t.processing_class, _rows(t)
    completions = t.completions(rows)
    visual = torch.tensor(vision_token_ids(proc))
    student, teacher = encode(proc, rows, completions, False), encode(proc, rows, completions, True)
    n = student["completion_mask"].shape[1]
    assert torch.equal(student["completion_mask"], teacher["completion_mask"])
    for i, c in enumerate(completions):
        for b in (student, teacher):
            tail = b["input_ids"][i, -n:][b["completion_mask"][i].bool()]
            assert tail.tolist() == c  # the tokens under the loss are exactly the completion
            assert not torch.isin(tail, visual).any()
            assert b["completion_mask"][i].sum() == len(c)
        if source == "cot":
            assert proc.tokenizer.decode(completions[i]) == "".join(
                p["text"] for p in rows[i]["completion"][0]["content"]) + "<|im_end|>\n"
        s_text, t_text = (proc.tokenizer.decode(b["input_ids"][i]) for b in (student, teacher))
        assert "# Condition" in t_text and "# Condition" not in s_text  # the policy: the teacher's input only
        assert "# Condition" not in proc.tokenizer.decode(completions[i]) or source == "teacher"
    # the logits kept are those that predict the completion: the full forward's, shifted by one
    with torch.no_grad():
        kept = completion_logits(t.model, student)
        full = t.model(**{k: v for k, v in student.items() if k != "completion_mask"}).logits
    assert torch.allclose(kept, full[:, -n - 1:-1], atol=1e-5)


def test_lora_teacher_is_the_adapter_off_base_model(setup, tmp_path):
    data, base = setup
    t = _trainer(setup, tmp_path, **{"lora.enabled": True})
    assert t.teacher.kind == "adapter off" and t.teacher.copy is None  # one model in memory
    with torch.no_grad():
        for name, p in t.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # a trained adapter: the student now differs from the base
    batch = encode(t.processing_class, _rows(t), [[50, 60, 70]] * 2, True)
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    plain = load_model("tiny", model=base)[0].eval()
    with torch.no_grad():
        with t.teacher() as m:
            teacher = m(**inputs).logits
        student = t.model.eval()(**inputs).logits
        reference = plain(**inputs).logits
    assert torch.allclose(teacher, reference, atol=1e-5) and not torch.allclose(student, reference, atol=1e-3)
    assert any(p.requires_grad for n, p in t.model.named_parameters() if "lora_" in n)


def test_a_stage_continuing_an_adapter_is_taught_by_that_adapter(setup, tmp_path):
    """From a LoRA VM-CPT folder the adapter-off model would skip VM-CPT: the teacher is its adapter, frozen."""
    from mpi_kit.cpt import run_cpt
    from mpi_kit.training import load_stage_model, stage_recipe

    data, base = setup
    lora = {"lora.enabled": True, "vm_cpt.learning_rate": 1e-2, "vm_cpt.per_device_train_batch_size": 2}
    cpt = tmp_path / "cpt"
    run_cpt("tiny", data, str(cpt), model=base, max_steps=2, **lora)
    t = _trainer(setup, tmp_path, init=str(cpt), **{"lora.enabled": True})
    assert t.teacher.kind == "starting adapter"
    batch = encode(t.processing_class, _rows(t), [[50, 60, 70]] * 2, True)
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    start, _ = load_stage_model(stage_recipe("tiny", str(cpt), **lora), str(cpt), trainable=False)
    with torch.no_grad():
        for name, p in t.model.named_parameters():
            if "lora_B.default" in name:
                p.add_(0.5)  # the student moves; its teacher must not
        with t.teacher() as m:
            teacher = m(**inputs).logits
        reference = start.eval()(**inputs).logits
    assert torch.allclose(teacher, reference, atol=1e-5)
    trainable = [n for n, p in t.model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)  # the student's adapter trains, the twin never


def test_short_run_moves_the_student_and_writes_its_summary(setup, tmp_path):
    data, base = setup
    before = _state(load_model("tiny", model=base)[0])
    out = tmp_path / "run"
    s = run_distill("tiny", data, str(out), model=base, max_steps=2, **FAST, **{"distill.learning_rate": 1e-2})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "distill" and summary["completed"] and summary["steps"] == 2
    assert summary["source"] == "teacher" and summary["teacher"] == "frozen copy" and len(summary["loss"]) == 2
    assert json.loads((out / "mpi_run.json").read_text())["source"] == "teacher"
    after = _state(load_model(str(out))[0])
    lm = [k for k in before if k.startswith("model.language_model.layers.") and k.endswith("q_proj.weight")]
    assert lm and all(not torch.equal(before[k], after[k]) for k in lm)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.visual."))
    again = run_distill("tiny", data, str(out), model=base, max_steps=2, **FAST, **{"distill.learning_rate": 1e-2})
    assert again["reused"] and again["steps"] == s["steps"]
    with pytest.raises(StageError, match="source"):  # another run's folder is refused, naming the difference
        run_distill("tiny", data, str(out), model=base, max_steps=2, source="cot", **FAST,
                    **{"distill.learning_rate": 1e-2})
    cot = run_distill("tiny", data, str(tmp_path / "cot"), model=base, max_steps=1, source="cot", **FAST)
    assert cot["completed"] and cot["num_examples"] == len(load_kit_data(data, "cot")["train"])


def test_bad_inputs_get_clear_errors(setup, tmp_path):
    data, base = setup
    with pytest.raises(StageError, match="source must be one of teacher, cot"):
        run_distill("tiny", data, str(tmp_path / "x"), model=base, source="gold")
    assert not (tmp_path / "x").exists()
    rl = distill_data(data, "teacher")
    with pytest.raises(DataError, match="row 0 has no policy"):
        distill_trainer("tiny", data, tmp_path / "y", model=base, dataset=rl.map(lambda r: {"policy": []}))
    cot = load_kit_data(data, "cot")["train"]  # CoT rows alone: no policy for the teacher
    with pytest.raises(DataError, match="row 0 has no policy"):
        distill_trainer("tiny", data, tmp_path / "z", model=base, dataset=cot)
    with pytest.raises(DataError, match="lacks column"):
        distill_trainer("tiny", data, tmp_path / "z", model=base, dataset=cot.remove_columns(["policy"]))


def test_pipeline_runs_policy_distillation(setup, tmp_path):
    from mpi_kit.paper import METHODS
    from mpi_kit.pipeline import BEYOND_PAPER, PipelineConfig, run_pipeline, table

    _, base = setup
    assert not set(BEYOND_PAPER) & set(METHODS)  # the paper's list stays the paper's
    cfg = PipelineConfig(out=str(tmp_path / "run"), depths=(2,), methods=("Policy Distillation",), num_policies=2,
                         num_scenes=8, distill_steps=2, eval_limit=2, max_new_tokens=8, forgetting=False, model=base)
    res = run_pipeline(cfg)
    r = res["methods"]["N2/Policy Distillation"]
    assert r["train"]["steps"] == 2 and "accuracy" in r and "override" in r and "policy_in_context" in r
    stage = json.loads((tmp_path / "run" / "N2" / "distill" / "summary.json").read_text())
    assert stage["stage"] == "distill" and stage["source"] == "teacher"
    assert "Policy Distillation" in table(res) and (tmp_path / "run" / "report.html").exists()
    # a comparison started before the recipe had its distill section is still this comparison when rerun
    saved = tmp_path / "run" / "mpi_pipeline.json"
    old = json.loads(saved.read_text())
    del old["recipe"]["distill"]
    saved.write_text(json.dumps(old))
    assert run_pipeline(cfg)["methods"]["N2/Policy Distillation"] == r


def test_cli_distill(setup, tmp_path):
    from mpi_kit.cli import main

    data, base = setup
    out = tmp_path / "cli"
    assert main(["distill", "--data", data, "--out", str(out), "--max-steps", "1", "--source", "cot", "--set",
                 f"model={base}", "distill.per_device_train_batch_size=2"]) == 0
    assert json.loads((out / "summary.json").read_text())["source"] == "cot"
    assert main(["distill", "--data", data, "--out", str(tmp_path / "bad"), "--set", "distill.temperature=-1"]) == 2
