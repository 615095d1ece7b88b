import json
import subprocess
import sys

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
