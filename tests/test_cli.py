import json
import subprocess
import sys

import pytest
import torch

from mpi_kit.cli import main


def test_data_command(tmp_path, capsys):
    rc = main(["data", "--out", str(tmp_path / "d"), "--num-policies", "2", "--num-scenes", "10", "--depth", "2",
               "--kinds", "qa", "rl", "--image-size", "48", "32"])
    assert rc == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["config"]["image_size"] == [48, 32] and set(summary["datasets"]) == {"qa", "rl"}
    assert (tmp_path / "d" / "qa").is_dir() and not (tmp_path / "d" / "cot").exists()


def test_bad_flag_value_is_a_clear_error(tmp_path, capsys):
    rc = main(["data", "--out", str(tmp_path), "--depth", "2", "--variant", "X"])
    assert rc == 2
    assert "variant must be 'T' or 'M'" in capsys.readouterr().err


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "mpi_kit", "data", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--num-policies" in r.stdout and "paper: 10" in r.stdout


@pytest.fixture(scope="module")
def stage_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "data"
    assert main(["data", "--out", str(out), "--num-policies", "1", "--num-scenes", "6", "--depth", "2",
                 "--kinds", "vmcpt", "cot", "rl", "--image-size", "48", "32"]) == 0
    return out


def _snapshot(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("recipe", ["tiny", "qwen2.5-vl-3b"])
@pytest.mark.parametrize("stage", [["cpt"], ["sft", "--mode", "cot"], ["rl", "--policy-rollout"], ["sft", "--set"]])
def test_unsloth_backend_refused_on_cpu_before_touching_out(stage_data, tmp_path, capsys, stage, recipe):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: unsloth may run here")
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "summary.json").write_text('{"steps": 2}\n')
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}\n')
    before = _snapshot(out)
    backend = ["backend=unsloth"] if stage[-1] == "--set" else ["--backend", "unsloth"]
    rc = main(stage + backend + ["--recipe", recipe, "--data", str(stage_data), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"mpi-kit {stage[0]}: error: backend='unsloth' needs a CUDA GPU" in err and "backend='hf'" in err
    assert _snapshot(out) == before


def test_pipeline_backend_flag(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: unsloth may run here")
    rc = main(["pipeline", "--recipe", "qwen2.5-vl-3b", "--out", str(tmp_path / "p"), "--backend", "unsloth"])
    assert rc == 2 and "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["sft", "--data", "d", "--out", "o", "--backend", "vllm"])
    assert "invalid choice: 'vllm' (choose from 'hf', 'unsloth')" in capsys.readouterr().err
    rc = main(["sft", "--data", "d", "--out", str(tmp_path / "o"), "--set", "backend=vllm"])
    assert rc == 2 and "backend: must be one of ('hf', 'unsloth')" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
