"""No command deletes a file it did not write, no state file is left half-written or read as if whole, one process
writes a run folder at a time, and a finished run is never trained past its end. Each case lost a user's files or
reported a wrong result before."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import hashed_reward
from mpi_kit.cli import main
from mpi_kit.data import DataError
from mpi_kit.tasks.clevr.data import build_datasets
from mpi_kit.folders import MANIFEST, StateError, lock, read_json, write_json
from mpi_kit.training import last_checkpoint, open_run

SMALL_DATA = dict(num_policies=2, num_scenes=4, depth=2, progress=False, kinds=("cot",))


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- data builds

def test_data_into_a_folder_of_the_users_files_is_refused_and_loses_nothing(tmp_path, capsys):
    proj = tmp_path / "proj"
    (proj / "eval").mkdir(parents=True)
    (proj / "policies").mkdir()
    (proj / "eval" / "results.csv").write_text("method,acc\nmine,0.9\n")
    (proj / "policies" / "my_policy.json").write_text('{"name": "mine"}')
    before = _tree(proj)
    assert main(["data", "--out", str(proj), "--num-policies", "2", "--num-scenes", "4", "--depth", "2"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert _tree(proj) == before


def test_a_rebuild_removes_only_what_the_last_build_wrote(tmp_path):
    out = tmp_path / "data"
    build_datasets(out=str(out), seed=0, **SMALL_DATA)
    manifest = read_json(out / MANIFEST)
    assert manifest["kind"] == "clevr-data" and "summary.json" in manifest["files"]
    (out / "notes.txt").write_text("my notes")  # the user's own file beside a kit build
    (out / "cot" / "mine.txt").write_text("mine too")
    build_datasets(out=str(out), seed=1, **{**SMALL_DATA, "kinds": ("qa",)})
    assert (out / "notes.txt").read_text() == "my notes" and (out / "cot" / "mine.txt").exists()
    assert not (out / "cot" / "dataset_dict.json").exists() and (out / "qa").is_dir()
    assert json.loads((out / "summary.json").read_text())["config"]["seed"] == 1
    assert not (out / ".mpi.lock").exists()  # a finished build leaves no lock behind


def test_a_build_of_an_older_kit_is_still_rebuilt(tmp_path):
    out = tmp_path / "data"
    build_datasets(out=str(out), seed=0, **SMALL_DATA)
    (out / MANIFEST).unlink()  # as an older kit left it: no manifest, its summary says what it was
    build_datasets(out=str(out), seed=2, **SMALL_DATA)
    assert json.loads((out / "summary.json").read_text())["config"]["seed"] == 2


def test_unbounded_sizes_are_refused_at_once():
    t = time.time()
    with pytest.raises(DataError, match="num_scenes must be at most"):
        build_datasets(out="unused", num_scenes=1_000_000, progress=False)
    assert time.time() - t < 1 and not Path("unused").exists()


# --------------------------------------------------------------------------------------- recorded runs

def test_recording_into_a_run_folder_is_refused_before_any_work(tmp_path, capsys):
    run = tmp_path / "my_rl_run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "notes.md").write_text("what I tried")
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "checkpoint-4" / "trainer_state.json").write_text("{}")
    before = _tree(run)
    t = time.time()
    assert main(["inspect", str(run), "--record"]) == 2
    assert "is not empty" in capsys.readouterr().err and time.time() - t < 5
    assert _tree(run) == before


def test_repacking_a_recording_replaces_only_its_own_files(tmp_path):
    from mpi_kit.recorded_run import ASSET_RUN, pack_run

    dest = tmp_path / "rec"
    pack_run(ASSET_RUN, dest, ASSET_RUN / "data")
    (dest / "my_notes.txt").write_text("keep me")
    pack_run(ASSET_RUN, dest, ASSET_RUN / "data")
    assert (dest / "my_notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (dest / "completions").iterdir()) == \
        sorted(p.name for p in (ASSET_RUN / "completions").iterdir())


# ------------------------------------------------------------------------------------------ state files

def test_state_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    f = tmp_path / "summary.json"
    write_json(f, {"steps": 4})

    def killed(*a):
        raise KeyboardInterrupt  # a kill between writing the new content and putting it in place

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_json(f, {"steps": 8})
    assert json.loads(f.read_text()) == {"steps": 4} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    monkeypatch.undo()
    write_json(f, {"loss": float("nan")})  # a diverged loss is written as valid JSON
    assert json.loads(f.read_text()) == {"loss": None}


@pytest.mark.parametrize("name", ["mpi_run.json", "summary.json"])
def test_a_damaged_run_state_file_names_itself_and_the_way_out(tmp_path, name):
    out = tmp_path / "run"
    open_run(out, {"stage": "sft_cot", "max_steps": 4})
    (out / "summary.json").write_text(json.dumps({"completed": True}))
    (out / name).write_text('{"stage": "sft_c')  # cut short by a kill
    with pytest.raises(StateError, match=f"{name} is damaged.*(new --out|Delete)"):
        open_run(out, {"stage": "sft_cot", "max_steps": 4})


def test_a_damaged_data_summary_or_results_file_is_a_message(tmp_path, capsys):
    out = tmp_path / "data"
    build_datasets(out=str(out), **SMALL_DATA)
    (out / "summary.json").write_text('{"task": "cle')
    with pytest.raises(StateError, match="summary.json is damaged"):
        build_datasets(out=str(out), **SMALL_DATA)
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "results.json").write_text('{"config": {"dep')
    assert main(["pipeline", "--out", str(pipe), "--depths", "2"]) == 2
    assert "results.json is damaged" in capsys.readouterr().err


def _checkpoint(path: Path, step: int) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(path / "model.safetensors"))
    torch.save({"python": 1}, path / "rng_state.pth")
    return path


@pytest.mark.parametrize("damaged", ["model.safetensors", "rng_state.pth"])
def test_a_truncated_checkpoint_file_is_skipped_like_a_truncated_optimizer(tmp_path, damaged):
    good = _checkpoint(tmp_path / "checkpoint-2", 2)
    cut = _checkpoint(tmp_path / "checkpoint-4", 4)
    f = cut / damaged
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.warns(UserWarning, match=f"checkpoint-4 .*{damaged}"):
        assert last_checkpoint(tmp_path) == str(good)


# ------------------------------------------------------------------------------------------------ locks

HOLD = "import sys, time; from mpi_kit.folders import lock\nwith lock(sys.argv[1]):\n    print('held', flush=True); " \
       "time.sleep(60)"


def test_one_process_writes_a_run_folder_and_a_dead_ones_lock_is_taken_over(tmp_path, small_rl_setup):
    from mpi_kit.sft import run_sft

    root, base = small_rl_setup
    out = tmp_path / "sft"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StateError, match=f"in use: process {holder.pid} is writing"):
            run_sft("tiny", root / "data", out, "cot", model=base, max_steps=1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with lock(out):  # the dead holder's lock is taken over
        pass
    assert not list(out.glob("checkpoint-*")) and not (out / "summary.json").exists()


# ----------------------------------------------------------------------------------------------- resume

def test_resuming_a_finished_rl_run_trains_no_step_more(tmp_path, small_rl_setup):
    from mpi_kit.rl import run_rl

    root, base = small_rl_setup
    torch.manual_seed(0)
    kw = dict(model=base, max_steps=4, save_steps=2, reward_funcs=[hashed_reward], reward_weights=[1.0],
              num_generations=2, **{"grpo.max_completion_length": 8, "grpo.per_device_train_batch_size": 4})
    out = tmp_path / "rl"
    first = run_rl("tiny", root / "data", out, "grpo", True, **kw)
    assert first["steps"] == 4
    (out / "summary.json").unlink()  # as if killed after the last checkpoint, before the final summary
    again = run_rl("tiny", root / "data", out, "grpo", True, **kw)
    assert again["steps"] == 4 and again["completed"] and again["resumed_from"].endswith("checkpoint-4")
    assert [p["loss"] for p in again["loss"]] == [p["loss"] for p in first["loss"]]
    assert not (out / "checkpoint-5").exists() and len(list((out / "completions").glob("*.parquet"))) == 4


def test_gta_data_replaces_only_an_earlier_gta_build(tmp_path, capsys):
    from mpi_kit.tasks.gta.data import build_gta_datasets

    out = tmp_path / "gta"
    build_gta_datasets(out=str(out), num_instances=12, kinds=("qa",))
    (out / "mine.txt").write_text("keep")
    build_gta_datasets(out=str(out), num_instances=12, seed=1, kinds=("cot",))
    assert (out / "mine.txt").exists() and (out / "cot").is_dir() and not (out / "qa").exists()
    user = tmp_path / "proj"
    (user / "qa").mkdir(parents=True)
    (user / "qa" / "notes.txt").write_text("mine")
    assert main(["gta-data", "--out", str(user), "--num-instances", "12"]) == 2
    assert (user / "qa" / "notes.txt").read_text() == "mine" and "is not empty" in capsys.readouterr().err


def test_an_rl_run_resumed_in_a_later_epoch_sees_the_prompts_in_the_same_order(tmp_path, small_rl_setup):
    from conftest import StopAt
    from mpi_kit.rl import run_rl
    from mpi_kit.rollout_log import load_rollouts

    root, base = small_rl_setup
    kw = dict(model=base, max_steps=12, save_steps=4, reward_funcs=[hashed_reward], reward_weights=[1.0],
              num_generations=2, **{"grpo.max_completion_length": 4, "grpo.per_device_train_batch_size": 2})

    def order(name, stop=None):
        out = tmp_path / name
        if stop:
            run_rl("tiny", root / "data", out, "grpo", False, callbacks=[StopAt(stop)], **kw)
        s = run_rl("tiny", root / "data", out, "grpo", False, **kw)
        df = load_rollouts(out)
        return s, df.groupby("step")["prompt_id"].first().tolist()

    full, a = order("full")
    resumed, b = order("resumed", stop=11)  # one prompt a step: step 11 is in the second epoch
    assert len(set(a[:10])) == 10 and resumed["resumed_from"].endswith("checkpoint-11")
    assert b == a  # epoch 2's shuffle, not epoch 1's replayed


def test_a_build_cut_short_is_cleaned_without_touching_the_users_files_beside_it(tmp_path):
    """Killed before its file list was written, a build's manifest names only the entries it started: a rebuild
    removes those, and a user's files beside them stay."""
    from mpi_kit.folders import start_manifest

    out = tmp_path / "data"
    out.mkdir()
    start_manifest(out, "clevr-data", ("summary.json", "scenes.jsonl", "policies", "overrides", "cot"))
    (out / "cot").mkdir()
    (out / "cot" / "data-00000-of-00001.arrow").write_bytes(b"half written")  # where the kill landed
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "plot.png").write_bytes(b"png")
    build_datasets(out=str(out), **SMALL_DATA)
    assert (out / "notes.txt").read_text() == "my notes" and (out / "mine" / "plot.png").read_bytes() == b"png"
    assert not (out / "cot" / "data-00000-of-00001.arrow").exists() and (out / "summary.json").exists()


def test_state_files_get_a_plain_file_s_mode(tmp_path):
    """Written atomically through a private temporary file, results.json still gets the mode any new file gets
    (umask applied), so a teammate or a web server can read it."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_scratch_folder_removes_only_itself(tmp_path, monkeypatch):
    """`scratch_folder` (what tools/colab_check.py and dev/browser_check.py work in): a user's file and folder
    beside it in the temporary directory stay; the scratch folder goes after the run, after a failed run too, and
    stays when asked to."""
    import tempfile

    from mpi_kit.folders import scratch_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "colab-check-mine").mkdir()  # a user's folder with the tool's prefix
    (tmp_path / "colab-check-mine" / "a.txt").write_text("mine too")
    with scratch_folder("colab-check-") as work:
        assert work.parent == tmp_path and work.name != "colab-check-mine" and not any(work.iterdir())
        (work / "venv").mkdir()
        (work / "venv" / "python").write_text("the run's")
    assert not work.exists()
    with pytest.raises(RuntimeError):
        with scratch_folder("colab-check-") as failed:
            (failed / "half.txt").write_text("the run's")
            raise RuntimeError("interrupted")
    assert not failed.exists()
    with scratch_folder("colab-check-", keep=True) as kept:
        (kept / "x").write_text("the run's")
    assert (kept / "x").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "colab-check-mine" / "a.txt").read_text() == "mine too"
