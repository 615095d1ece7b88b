"""Bad input of every kind gets a clear error that says what is wrong and how to fix it (and loses nothing
already saved); rebuilding data into a folder leaves nothing stale. Each case here was a traceback, a silent
wrong result or a misleading message before."""
import json
from pathlib import Path

import pytest
from PIL import Image

from mpi_kit.cli import main
from mpi_kit.tasks.clevr.data import DataConfig, build_datasets, load_policies
from mpi_kit.data import DataError, load_kit_data, require_columns
from mpi_kit.tasks.clevr.policy import Policy, PolicyError, sample_policy
from mpi_kit.tasks.clevr.scenes import Scene, SceneError, load_clevr_scenes, scene_image

OBJ = {"shape": "cube", "color": "red", "size": "small", "material": "metal", "x": 0.5, "y": 0.5}


def _clevr(root: Path, scenes: list, n_images: int = 1) -> Path:
    (root / "scenes").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    for i in range(n_images):
        Image.new("RGB", (480, 320), (120, 120, 120)).save(root / "images" / "val" / f"CLEVR_val_{i:06d}.png")
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"scenes": scenes}))
    return root


def _clevr_scene(i: int, color="cyan") -> dict:
    return {"image_index": i, "image_filename": f"CLEVR_val_{i:06d}.png",
            "objects": [{"color": color, "size": "small", "shape": "cube", "material": "metal",
                         "pixel_coords": [240, 160, 10]}]}


def test_rebuilding_data_into_a_folder_leaves_nothing_stale(tmp_path):
    out = tmp_path / "data"
    build_datasets(out=str(out), num_policies=2, num_scenes=4, depth=2, seed=0, progress=False, kinds=("cot",))
    first = set(load_policies(out))
    again = build_datasets(out=str(out), num_policies=2, num_scenes=4, depth=2, seed=0, progress=False,
                           kinds=("cot",))
    assert again["reused"]  # same settings: nothing redone
    build_datasets(out=str(out), num_policies=2, num_scenes=4, depth=2, seed=1, progress=False, kinds=("qa",))
    summary = json.loads((out / "summary.json").read_text())
    assert set(load_policies(out)) == set(summary["policies"]) and set(summary["policies"]) != first
    assert not (out / "cot").exists() and (out / "qa").exists()


def test_none_values_are_refused():
    with pytest.raises(SceneError, match="object color is None; it must be one of"):
        Scene.from_dict({"objects": [{**OBJ, "color": None}]})
    with pytest.raises(SceneError, match="position x"):
        Scene.from_dict({"objects": [{**OBJ, "x": "left"}]})
    d = sample_policy(2, 0).to_dict()
    d["conditions"][0]["value"] = None
    with pytest.raises(PolicyError, match=r"condition '1' has value set to None; each must be a non-empty string"):
        Policy.from_dict(d)
    d = sample_policy(2, 0).to_dict()
    d["conditions"][0]["no"] = None
    with pytest.raises(PolicyError, match="has no set to None"):
        Policy.from_dict(d)
    d = sample_policy(2, 0).to_dict()
    d["depth"] = "two"
    with pytest.raises(PolicyError, match="depth must be a whole number from 1 to 8, got 'two'"):
        Policy.from_dict(d)


def test_policy_files_that_are_not_policies(tmp_path):
    (tmp_path / "bin.json").write_bytes(bytes(range(256)))
    with pytest.raises(PolicyError, match="not a text file"):
        Policy.from_json(tmp_path / "bin.json")
    with pytest.raises(PolicyError, match="is a folder; pass a policy .json file"):
        Policy.from_json(tmp_path)


def test_sizes_are_bounded_and_checked(tmp_path):
    with pytest.raises(DataError, match="depth must be from 1 to 8, got 40"):
        DataConfig(depth=40).check()
    with pytest.raises(PolicyError, match="depth must be from 1 to 8"):
        sample_policy(40, 0)
    with pytest.raises(DataError, match=r"image_size must be \(width, height\) of at least 32 px"):
        DataConfig(image_size=(0, 0)).check()
    root = _clevr(tmp_path / "CLEVR_v1.0", [_clevr_scene(i) for i in range(3)], n_images=3)
    with pytest.raises(DataError, match="has only 3 val scenes but num_scenes is 40; pass --num-scenes 3"):
        build_datasets(out=str(tmp_path / "d"), num_policies=1, num_scenes=40, depth=2, clevr_root=str(root),
                       progress=False, kinds=("qa",))


def test_clevr_files_that_are_broken(tmp_path):
    root = _clevr(tmp_path / "a", [_clevr_scene(0)])
    (root / "images" / "val" / "CLEVR_val_000000.png").write_bytes(b"\x89PNG not really")
    [s] = load_clevr_scenes(root)
    with pytest.raises(SceneError, match="is not a readable image"):
        scene_image(s, (96, 64))
    root = tmp_path / "b"
    _clevr(root, [])
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"scenes": {"0": _clevr_scene(0)}}))
    with pytest.raises(SceneError, match="'scenes' is a dict; a CLEVR scene file holds a list"):
        load_clevr_scenes(root)
    root = _clevr(tmp_path / "c", [_clevr_scene(0, color="mauve")])
    with pytest.raises(SceneError, match=r"CLEVR_val_scenes.json: scene 0: unknown color 'mauve'"):
        load_clevr_scenes(root)
    root = _clevr(tmp_path / "d", [_clevr_scene(0)], n_images=0)
    with pytest.raises(FileNotFoundError, match="build without --clevr-root") as e:
        load_clevr_scenes(root)
    assert "require_images" not in str(e.value)  # not a CLI flag


def test_datasets_without_a_split_or_with_a_missing_image(tmp_path):
    out = tmp_path / "d"
    build_datasets(out=str(out), num_policies=1, num_scenes=4, depth=2, progress=False, kinds=("cot",))
    with pytest.raises(DataError, match="has no 'validation' split \\(it has train, test\\)"):
        load_kit_data(out, "cot")["validation"]
    ds = load_kit_data(out, "cot")["train"]
    bad = ds.map(lambda r, i: {"images": [None] if i == 1 else r["images"]}, with_indices=True)
    with pytest.raises(DataError, match="row 1 has a missing image"):
        require_columns(bad, ["prompt", "images"], "CoT SFT")


def test_cli_bad_arguments_exit_2_with_a_message(tmp_path, capsys):
    data = tmp_path / "d"
    assert main(["data", "--out", str(tmp_path / "x"), "--depth", "40"]) == 2
    assert "depth must be from 1 to 8" in capsys.readouterr().err
    assert main(["data", "--out", str(tmp_path / "x"), "--image-size", "0", "0"]) == 2
    assert "image_size" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    assert main(["data", "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["pipeline", "--out", str(tmp_path / "p"), "--methods", "Bogus"]) == 2
    assert "unknown methods ['Bogus']; choose from: In-Context" in capsys.readouterr().err
    assert main(["pipeline", "--out", str(tmp_path / "p"), "--eval-limit", "0"]) == 2
    assert "eval_limit must be >= 1" in capsys.readouterr().err
    build_datasets(out=str(data), num_policies=1, num_scenes=4, depth=2, progress=False, kinds=("rl",))
    assert main(["rl", "--data", str(data), "--out", str(tmp_path / "r"), "--num-generations", "1"]) == 2
    assert "num_generations (G) must be >= 2" in capsys.readouterr().err
    assert main(["sft", "--recipe", "tiny-typo", "--data", str(data), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'tiny-typo'. Did you mean 'tiny'?" in err and "download" not in err


def test_accuracy_reward_wants_one_case_per_completion():
    from mpi_kit.tasks.clevr.rewards import accuracy_reward

    with pytest.raises(ValueError, match="got 3 completions but 1 gold cases"):
        accuracy_reward(["a", "b", "c"], case=["Case 1"])


def test_general_evaluation_with_a_tiny_limit():
    """`pipeline --eval-limit 2` died after training: the caption task got 2 // 4 = 0 examples."""
    from mpi_kit.tasks.clevr.evaluate import general_abilities as evaluate
    from mpi_kit.tiny import build_tiny

    from conftest import SMALL
    model, processor = build_tiny(["Is there a red cube in the image? Yes No 1 2 3"] * 4, dims=SMALL)
    res = evaluate(model, processor, n_perception=2, n_policy=0, depths=(), progress=False)
    assert res["n"]["describe"] == 1 and 0 <= res["perception"] <= 1
