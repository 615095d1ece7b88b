"""Colab for real: the wheel carries the assets, precision fits the card, stages say how long they will take, and
every notebook's badge and install cell name the one repository constant (tools/nb.py: REPO)."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import nb  # noqa: E402  (tools/nb.py)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


# ------------------------------------------------------------------------------------------------ the wheel

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from this checkout (what `pip install git+<repo>` builds), offline, in a scratch copy."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("mpi_kit", "assets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                        "-w", str(work / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "absent from the `packages` configuration" not in r.stderr  # every asset folder is declared
    return next((work / "dist").glob("mpi_kit-*.whl"))


def test_wheel_contains_every_asset(wheel):
    with zipfile.ZipFile(wheel) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
    assets = [p for p in (ROOT / "assets").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert assets and any(p.name == "model.safetensors" for p in assets)
    for p in assets:
        name = "mpi_kit/assets/" + p.relative_to(ROOT / "assets").as_posix()
        assert sizes.get(name) == p.stat().st_size, f"{name} missing from the wheel or of another size"


def test_wheel_contains_every_module(wheel):
    """Every module of the package, the task folders' included: a subpackage missing from pyproject.toml's
    `packages` installs in a checkout (editable) and breaks only where a learner installs from git, as Colab does."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "mpi_kit").rglob("*.py")
               if "__pycache__" not in p.parts]
    missing = [m for m in modules if m not in names]
    assert len(modules) > 50 and not missing, f"modules missing from the wheel (pyproject.toml: packages): {missing}"


def test_fresh_install_finds_the_tiny_model_and_the_recorded_run(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                        str(target), str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    probe = ("import json, mpi_kit, mpi_kit.pipeline, mpi_kit.tasks, mpi_kit.recipes as r; d = r.TINY_MODEL_DIR; "
             "run = r.ASSETS_DIR / 'rollouts'; "
             "print(json.dumps({'pkg': mpi_kit.__file__, 'model': str(d), 'config': (d / 'config.json').is_file(), "
             "'weights': (d / 'model.safetensors').stat().st_size, 'run': str(run), "
             "'summary': (run / 'summary.json').is_file(), "
             "'parquet': len(list((run / 'completions').glob('*.parquet'))), 'tiny': r.get_recipe('tiny').model}))")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["pkg"].startswith(str(target))  # the installed copy, not this checkout
    assert got["model"].startswith(str(target)) and got["config"] and got["tiny"] == got["model"]
    assert got["weights"] == (ROOT / "assets" / "tiny-vlm" / "model.safetensors").stat().st_size
    assert got["run"].startswith(str(target)) and got["summary"]
    assert got["parquet"] == len(list((ROOT / "assets" / "rollouts" / "completions").glob("*.parquet"))) > 0


def test_the_inspector_reads_the_recorded_run_where_the_recipes_find_the_assets():
    from mpi_kit.inspector import ASSET_RUN
    from mpi_kit.recipes import ASSETS_DIR, TINY_MODEL_DIR

    assert ASSET_RUN == ASSETS_DIR / "rollouts" and TINY_MODEL_DIR == ASSETS_DIR / "tiny-vlm"
    assert ASSETS_DIR == ROOT / "assets"  # in a checkout: the top-level folder


# ------------------------------------------------------------------------------------------------ precision

@pytest.fixture
def gpu(monkeypatch):
    """Pretend a CUDA GPU of a given compute capability is visible: `gpu((7, 5), "Tesla T4")`."""
    import torch

    from mpi_kit import models

    monkeypatch.setattr(models, "_ANNOUNCED", set())

    def fake(capability, name):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)

    return fake


@pytest.mark.parametrize("capability, name, want", [((7, 5), "Tesla T4", "fp16"), ((7, 0), "Tesla V100-SXM2-16GB",
                                                     "fp16"), ((8, 0), "NVIDIA A100-SXM4-40GB", "bf16"),
                                                    (None, "", "fp32")])
def test_auto_precision_fits_the_card(gpu, capability, name, want):
    from mpi_kit.models import resolve_precision
    from mpi_kit.recipes import get_recipe
    from mpi_kit.training import trainer_kwargs

    gpu(capability, name)
    assert get_recipe("qwen2.5-vl-3b").precision == "auto" and get_recipe("tiny").precision == "fp32"
    assert resolve_precision("auto") == want
    for explicit in ("bf16", "fp16", "fp32"):  # an explicit precision always wins
        assert resolve_precision(explicit) == explicit
    r = get_recipe("qwen2.5-vl-3b", memory_budget_gib=0.0)
    kw = trainer_kwargs(r, r.sft_cot, "unused")
    assert (kw["bf16"], kw["fp16"], kw["use_cpu"]) == (want == "bf16", want == "fp16", capability is None)
    r = get_recipe("qwen2.5-vl-3b", memory_budget_gib=0.0, precision="bf16")  # explicit: bf16 even on a T4
    assert trainer_kwargs(r, r.sft_cot, "unused")["bf16"] is True


@pytest.mark.parametrize("capability, dtype", [((7, 5), "float16"), ((8, 0), "bfloat16")])
def test_load_uses_the_resolved_dtype_for_weights_and_bitsandbytes_compute(gpu, monkeypatch, capsys, capability,
                                                                          dtype):
    import torch
    import transformers

    from mpi_kit.models import load_model
    from mpi_kit.recipes import TINY_MODEL_DIR

    gpu(capability, "Tesla T4" if capability < (8, 0) else "NVIDIA A100-SXM4-40GB")
    seen = {}

    class Stop(Exception):
        pass

    def fake_from_pretrained(path, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fake_from_pretrained)
    with pytest.raises(Stop):
        load_model("qwen2.5-vl-3b", model=str(TINY_MODEL_DIR))
    assert seen["dtype"] is getattr(torch, dtype)
    assert seen["quantization_config"].bnb_4bit_compute_dtype is getattr(torch, dtype)
    out = capsys.readouterr().out
    assert out.count("precision auto ->") == 1 and ("fp16" if dtype == "float16" else "bf16") in out
    with pytest.raises(Stop):  # printed once per process and card, not at every load
        load_model("qwen2.5-vl-3b", model=str(TINY_MODEL_DIR))
    assert "precision auto" not in capsys.readouterr().out


def test_stage_facts_carry_precision_and_the_time_estimate(gpu, capsys):
    import datasets

    from mpi_kit.models import load_model
    from mpi_kit.recipes import TINY_MODEL_DIR, get_recipe
    from mpi_kit.timing import stage_facts

    _, processor = load_model("tiny")
    msg = lambda text: [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": text}]}]
    ds = datasets.Dataset.from_list([{"prompt": msg("According to Policy: X, what should be the response?"),
                                      "completion": [{"role": "assistant", "content": [
                                          {"type": "image", "text": None}, {"type": "text", "text": "Case 1"}]}]}] * 8)
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=1, world_size=1, max_steps=10,
                           num_train_epochs=1)
    r = get_recipe("qwen2.5-vl-3b", model=str(TINY_MODEL_DIR))
    gpu(None, "")
    assert stage_facts("sft_cot", r, args, ds, processor) == {"precision": "fp32", "time_estimate": None}
    gpu((7, 5), "Tesla T4")
    facts = stage_facts("sft_cot", r, args, ds, processor)
    assert facts["precision"] == "fp16"
    est = facts["time_estimate"]
    assert (est["card"], est["precision"], est["steps"]) == ("T4", "fp16", 10) and est["seconds"] > 0
    assert "time estimate for sft_cot on a T4 (fp16): 10 steps" in capsys.readouterr().out


def test_summary_json_records_the_resolved_precision(tmp_path):
    from conftest import SMALL, message_text
    from mpi_kit.tasks.clevr.data import build_datasets
    from mpi_kit.data import load_kit_data
    from mpi_kit.sft import run_sft
    from mpi_kit.tiny import build_tiny, save_tiny

    build_datasets(out=str(tmp_path / "data"), num_policies=1, num_scenes=4, depth=2, progress=False, kinds=("cot",))
    base = save_tiny(*build_tiny(message_text(load_kit_data(tmp_path / "data", "cot")["train"]) * 4, dims=SMALL),
                     tmp_path / "base")
    s = run_sft("tiny", str(tmp_path / "data"), str(tmp_path / "sft"), "cot", model=str(base), max_steps=1,
                precision="auto")
    on_disk = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert s["precision"] == on_disk["precision"] == "fp32" and on_disk["time_estimate"] is None  # CPU


# ------------------------------------------------------------------------------------------------ time estimate

def test_time_estimate_matches_a_hand_calculation():
    """SFT on the real Qwen2.5-VL-3B shape on a T4: 16 sequences of 823 tokens per step (4 x 4), 187 image tokens."""
    from mpi_kit.recipes import get_recipe
    from mpi_kit.timing import estimate_stage

    h, inter, layers, vocab, kv = 2048, 11008, 36, 151936, 2 * 128  # hidden, MLP, layers, vocab, kv heads x dim
    lin = layers * (h * h + 2 * h * kv + h * h + 3 * h * inter)  # q, k, v, o, gate/up/down: the NF4 weights
    lora = 16 * layers * ((h + h) + 2 * (h + kv) + (h + h) + 3 * (h + inter))  # r x (in + out) per wrapped linear
    vit = 32 * (4 * 1280 ** 2 + 3 * 1280 * 3420) + (1280 * 4) ** 2 + 1280 * 4 * h  # blocks + patch merger
    T, seqs, img = 823, 16, 187
    forward = 2 * (lin + lora) * T + 2 * vocab * h * T + 2 * T * T * h * layers  # per sequence; causal attention
    flops = 3 * forward * seqs + 2 * vit * img * 4 * seqs  # LoRA + checkpointing: fwd + bwd (activations) + recompute
    compute = flops / (65e12 * 0.3)  # T4 fp16 tensor peak x the achieved fraction
    dequant = 4 * 3 * lin * 4.5 / (320e9 * 0.7)  # 4 micro-steps x 3 passes x NF4 dequantization traffic
    e = estimate_stage(get_recipe("qwen2.5-vl-3b"), "sft_cot", 10, tokens=T, gpu="T4", micro_batch=4,
                       accumulation=4, image_tokens=img)
    assert e.precision == "fp16"  # 'auto' on a T4 (compute capability 7.5)
    assert e.step_seconds == pytest.approx(compute + dequant, rel=1e-9)
    assert e.seconds == pytest.approx(10 * (compute + dequant), rel=1e-9)
    assert e.tflop_per_step == pytest.approx(flops / 1e12, rel=1e-9)
    assert 13 < e.step_seconds < 16  # ~14.4 s: what the README's numbers rest on
    bf16 = estimate_stage(get_recipe("qwen2.5-vl-3b"), "sft_cot", 10, tokens=T, gpu="T4", precision="bf16",
                          micro_batch=4, accumulation=4, image_tokens=img)
    assert bf16.step_seconds > 5 * e.step_seconds  # emulated bf16 on a T4: why 'auto' picks fp16 there


def test_unknown_card_says_what_is_known():
    from mpi_kit.timing import UnknownCardError, card

    assert card("Tesla T4").name == "T4" and card("NVIDIA A100-SXM4-40GB").name == "A100"
    assert card("NVIDIA A10").name == "A10" and card("NVIDIA L4").name == "L4"
    with pytest.raises(UnknownCardError, match="known: T4, V100"):
        card("Imaginary X1")


def test_tutorial_scale_fits_a_free_t4_and_paper_scale_is_one_parameter_away():
    from mpi_kit.scales import GPU_NOTEBOOKS, notebook_minutes, notebook_scale

    tutorial, paper = notebook_minutes("tutorial"), notebook_minutes("paper")
    assert set(tutorial) == set(GPU_NOTEBOOKS)
    for name, minutes in tutorial.items():
        assert 0 < minutes < 30, f"{name}: {minutes} min on a T4 by the estimate"
        assert paper[name] > tutorial[name]
    assert notebook_scale("06_policy_rollout.ipynb", "paper")["num_scenes"] == 2000
    with pytest.raises(KeyError, match="SCALE must be one of"):
        notebook_scale("06_policy_rollout", "huge")


# ------------------------------------------------------------------------------------------------ notebooks

@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_badge_install_cell_and_runtime_use_the_one_repository_constant(path):
    cells = json.loads(path.read_text())["cells"]
    first, install = source(cells[0]), source(cells[1])
    assert first == nb.first_cell(path.name, first.splitlines()[0]), "run `python tools/nb.py`"
    assert f"colab.research.google.com/github/{nb.REPO}/blob/main/notebooks/{path.name}" in first
    assert "**Runtime:**" in first and ("T4 GPU" in first) == nb.gpu_notebook(path.name)
    assert install == nb.INSTALL and f'REPO = "{nb.REPO}"' in install
    params = next(source(c) for c in cells if source(c).startswith("RECIPE ="))
    if nb.gpu_notebook(path.name):
        assert params.splitlines()[1].startswith('SCALE = "tutorial"')
        assert re.search(rf'notebook_scale\("{path.stem}", SCALE[,)]', "".join(source(c) for c in cells))
    for text in [source(c) for c in cells]:
        assert "github.com/mpi-kit/" not in text


def test_readme_names_the_same_repository_constant_and_docs_the_estimated_minutes():
    import re

    from mpi_kit.scales import notebook_minutes

    readme = (ROOT / "README.md").read_text()
    assert nb.readme_block() in readme, "run `python tools/nb.py`"
    assert "github.com/mpi-kit/" not in readme
    colab = (ROOT / "docs" / "colab.md").read_text()
    for name, minutes in notebook_minutes("tutorial").items():
        row = re.search(rf"\| `{name}` \| ([0-9.]+) min", colab)
        assert row, f"docs/colab.md's table has no row for {name}"
        assert abs(float(row.group(1)) - minutes) <= 0.5, (f"{name}: docs/colab.md says {row.group(1)}, "
                                                           f"estimate {minutes}")


def run_install_cell(monkeypatch, *, repo=None, have=("torch", "torchvision"), kit=False):
    """Execute the notebooks' install cell with pip mocked: returns the pip argument lists it ran."""
    import importlib.util

    calls = []
    real = importlib.util.find_spec
    present = set(have) | ({"mpi_kit"} if kit else set())

    def find_spec(name, *a, **k):
        if name in ("mpi_kit", "torch", "torchvision"):
            return object() if name in present else None
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append((args, kw)) or SimpleNamespace(
        returncode=0, stdout="", stderr=""))
    code = nb.INSTALL if repo is None else nb.INSTALL.replace(f'REPO = "{nb.REPO}"', f'REPO = "{repo}"')
    exec(compile(code, "install-cell", "exec"), {})
    return calls


def test_install_cell_keeps_colabs_torch_is_quiet_and_idempotent(monkeypatch, capsys):
    if nb.REPO == nb.REPO_PLACEHOLDER:
        with pytest.raises(RuntimeError, match="Set REPO"):
            run_install_cell(monkeypatch)
    calls = run_install_cell(monkeypatch, repo="someone/mpi-kit")  # Colab: a CUDA torch is already there
    (pins, kw1), (kit, kw2) = calls
    assert pins[:5] == [sys.executable, "-m", "pip", "install", "-q"]
    assert kw1["capture_output"] and kw2["capture_output"]  # quiet: pip's output only shows if it fails
    names = {a.split("==")[0] for a in pins[5:]}
    assert {"transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets"} <= names
    assert not names & {"torch", "torchvision"}  # Colab's CUDA build is kept
    assert kit[5:] == ["--no-deps", "mpi-kit @ git+https://github.com/someone/mpi-kit"]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("mpi-kit installed; torch ")  # one line, pip itself silent
    calls = run_install_cell(monkeypatch, repo="someone/mpi-kit", have=())  # no torch at all: the pinned one
    assert "torch==2.14.1" in calls[0][0] and any(a.startswith("torchvision==") for a in calls[0][0])
    capsys.readouterr()
    assert run_install_cell(monkeypatch, repo="someone/mpi-kit", kit=True) == []  # rerun: nothing to do
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_colab_python_for_real(tmp_path):
    """`tools/colab_check.py`: a fresh Python 3.12 (Colab's) environment, the notebooks' install cell run unmocked
    against this checkout, then notebooks 01 and 00 on the tiny recipe: no error, nothing on stderr."""
    sys.path.insert(0, str(ROOT / "tools"))
    from colab_check import _python312

    python = _python312()
    if subprocess.run([python, "--version"], capture_output=True).returncode:
        pytest.skip("no Python 3.12 on this machine (Colab's version): install one, e.g. `pyenv install 3.12`")
    (tmp_path / "notes.txt").write_text("mine")  # a user's file in the check's temporary directory
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "colab_check.py"), "--python", python],
                       capture_output=True, text=True, timeout=1500, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Colab check passed on Python 3.12" in r.stdout
    assert "01_policies.ipynb" in r.stdout and "00_quickstart.ipynb" in r.stdout
    # it removed only the folder it made: the user's file stays, the checkout is as it was
    assert (tmp_path / "notes.txt").read_text() == "mine" and not list(tmp_path.glob("colab-check-*"))
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == status, f"the checkout changed while the check ran (edits made meanwhile show here too): {after}"
