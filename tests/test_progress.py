"""What a training cell prints: a short stage on a ~0.2M-parameter model shows one summary line (and, with
progress=True, one bar named after the stage), never TRL's log dicts, the libraries' "Loading weights" / "Writing
model shards" bars or the tokenizer-alignment warning; the two warnings the kit drops are dropped narrowly."""
import logging
import re
import subprocess
import sys

from mpi_kit.cpt import run_cpt
from mpi_kit.rl import run_rl

NOISE = ("{'loss'", "'train_runtime'", "Writing model shards", "Loading weights", "PAD/BOS/EOS",
         "gemm_4bit_forward", "mtime may not be reliable")
FAST_RL = {"grpo.max_completion_length": 8, "grpo.per_device_train_batch_size": 4}


def test_a_quiet_stage_prints_one_summary_line(small_rl_setup, tmp_path, capfd):
    root, base = small_rl_setup
    capfd.readouterr()
    run_cpt("tiny", root / "data", tmp_path / "cpt", model=base, max_steps=2,
            **{"vm_cpt.per_device_train_batch_size": 2})
    out, err = capfd.readouterr()
    for noise in NOISE + ("%|",):
        assert noise not in out + err, f"{noise!r} printed:\n{out}{err}"
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1, out + err
    assert re.fullmatch(r"cpt: 2 steps in [\d.]+ s · loss [\d.]+ → [\d.]+", lines[0]), lines[0]


def test_progress_shows_one_bar_per_stage_and_rl_reports_its_reward(small_rl_setup, tmp_path, capfd):
    root, base = small_rl_setup
    capfd.readouterr()
    run_rl("tiny", root / "data", tmp_path / "poro", "grpo", True, model=base, max_steps=2, num_generations=2,
           progress=True, **FAST_RL)
    out, err = capfd.readouterr()
    for noise in NOISE:
        assert noise not in out + err, f"{noise!r} printed:\n{out}{err}"
    bars = [chunk for chunk in re.split(r"[\r\n]", err) if "%|" in chunk]
    assert bars and all(b.startswith("poro:") for b in bars), bars  # the stage's own bar, no library bar
    assert any("2/2" in b for b in bars)
    assert re.search(r"^poro: 2 steps in [\d.]+ s · reward [\d.]+ → [\d.]+ · loss ", out, re.M), out


def test_warning_filters_drop_only_the_named_warnings(caplog):
    import mpi_kit  # noqa: F401  (installs the filters)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        log.warning("some other bitsandbytes warning")
        logging.getLogger("transformers.trainer_utils").warning("another transformers warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning",
                                                        "another transformers warning"]


def test_importing_the_kit_and_bitsandbytes_is_quiet():
    r = subprocess.run([sys.executable, "-c", "import mpi_kit.rl, bitsandbytes"], capture_output=True, text=True,
                       timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "gemm_4bit_forward" not in r.stderr and not r.stdout.strip(), r.stderr[-2000:]


def test_the_summary_line_says_stopped_resumed_and_reused(small_rl_setup, tmp_path, capfd):
    from conftest import StopAt

    root, base = small_rl_setup
    kw = dict(model=base, max_steps=4, save_steps=10, **{"vm_cpt.per_device_train_batch_size": 2})
    said = []
    for callbacks in ([StopAt(2)], [], []):
        capfd.readouterr()
        run_cpt("tiny", root / "data", tmp_path / "run", callbacks=callbacks, **kw)
        said.append(capfd.readouterr().out.strip())
    assert said[0].startswith("run: 2 steps in ") and said[0].endswith(
        "stopped at step 2 of 4: rerun into the same folder to resume")
    assert said[1].startswith("run: 2 steps (steps 3-4, resumed from checkpoint-2) in ")
    assert said[2] == "run: already trained (4 steps) with these settings; reused as it is, nothing retrained"


def test_building_data_quietly_prints_nothing(tmp_path, capfd):
    """progress=False means no "Saving the dataset" bars from `datasets` either."""
    from mpi_kit.tasks.clevr.data import build_datasets
    from mpi_kit.tasks.gta.data import build_gta_datasets

    capfd.readouterr()
    build_datasets(out=str(tmp_path / "c"), num_policies=1, num_scenes=4, depth=2, progress=False)
    build_gta_datasets(out=str(tmp_path / "g"), num_instances=6)
    out, err = capfd.readouterr()
    assert "Saving the dataset" not in out + err and "Map" not in out + err, err[-500:]
