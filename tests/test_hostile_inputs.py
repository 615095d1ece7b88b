"""Hostile policies and CLEVR folders get a clear PolicyError / SceneError quickly, never a traceback, a hang or
a silently wrong result: huge or deep policies are refused before the tree is built, braces in a policy's text
stay verbatim, and CLEVR scenes get unique ids, finite positions and images inside the CLEVR root only."""
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from mpi_kit.tasks.clevr.policy import Policy, PolicyError, sample_policy
from mpi_kit.tasks.clevr.scenes import Scene, SceneError, load_clevr_scenes

ATTRS = [("color", "red"), ("size", "small"), ("material", "metal"), ("shape", "cube")]


def _chain(n: int, depth: int | None = 2) -> dict:
    """A policy whose conditions form one chain of `n` along no edges (a tree n conditions deep)."""
    conds = [{"id": f"c{i}", "attribute": ATTRS[i % 4][0], "value": ATTRS[i % 4][1], "yes": f"Case {i}",
              "no": f"c{i + 1}" if i + 1 < n else f"Case {n}"} for i in range(n)]
    d = {"name": "L2-Chain", "root": "c0", "cases": [f"Case {k}" for k in range(n + 1)], "conditions": conds}
    return d if depth is None else {**d, "depth": depth}


def _hand() -> dict:
    return {"name": "L2-Hand", "depth": 2, "cases": ["Case 0", "Case 1", "Case 2", "Case 3"], "conditions": [
        {"id": "1", "attribute": "color", "value": "cyan", "yes": "1.1", "no": "1.2"},
        {"id": "1.1", "attribute": "size", "value": "small", "yes": "Case 2", "no": "Case 0"},
        {"id": "1.2", "attribute": "material", "value": "metal", "yes": "Case 3", "no": "Case 1"}]}


# ------------------------------------------------------------------------------------------------- policies

def test_a_huge_policy_is_refused_before_its_tree_is_built():
    text = json.dumps(_chain(110_000))  # ~10 MB declaring depth 2
    start = time.perf_counter()
    with pytest.raises(PolicyError, match=r"110000 conditions; a depth-2 tree has at most 3"):
        Policy.from_json(text)
    assert time.perf_counter() - start < 2


def test_declared_depth_must_match_the_tree():
    with pytest.raises(PolicyError, match=r"declares depth 3 but its tree is 2 conditions deep; set 'depth' to 2"):
        Policy.from_dict({**_hand(), "depth": 3})
    with pytest.raises(PolicyError, match=r"declares depth 4 but its tree is 5 conditions deep; set 'depth' to 5"):
        Policy.from_dict(_chain(5, depth=4))
    assert Policy.from_dict({k: v for k, v in _hand().items() if k != "depth"}).depth == 2  # inferred
    with pytest.raises(PolicyError, match=r"its tree is 9 conditions deep; a policy has at most 8 levels"):
        Policy.from_dict(_chain(9, depth=None))


def test_deep_or_misshapen_policy_json_is_refused():
    for n in (1_000, 100_000):
        with pytest.raises(PolicyError, match="nested too deeply"):
            Policy.from_json('{"name": "x", "conditions": ' + "[" * n + "]" * n + ', "cases": []}')
    with pytest.raises(PolicyError, match=r"1000 conditions; a policy of at most 8 levels has at most 255"):
        Policy.from_dict(_chain(1_000, depth=None))
    with pytest.raises(PolicyError, match=r"must be a JSON object .* got a list"):
        Policy.from_json(json.dumps([_hand()]))
    with pytest.raises(PolicyError, match="does not parse"):
        Policy.from_json('{"name": ' + "1" * 5_000 + "}")  # beyond Python's int digit limit
    d = _hand()
    d["conditions"][0] = [[[[[[[[[[["deep"]]]]]]]]]]]
    with pytest.raises(PolicyError, match="condition #0 must be an object") as e:
        Policy.from_dict(d)
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("key,value,message", [
    ("cases", ["Case 0", 1, "Case 2", "Case 3"], "cases must be non-empty strings"),
    ("cases", [["Case 0"]], "cases must be non-empty strings"),
    ("root", ["1"], "'root' must be a condition id"),
    ("instruction", None, "'instruction' must be a string"),
    ("variant", "X", "variant must be 'T' or 'M'"),
    ("image_values", [["color"]], "image_values must be"),
    ("image_values", [["color", "mauve"]], "unknown color 'mauve'"),
])
def test_misshapen_policy_fields(key, value, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict({**_hand(), key: value})


def test_braces_in_a_policy_text_stay_verbatim():
    text = r"Reply as \boxed{Case 3}; {0} and {name!r} and a lone { are text. Policy {name}."
    p = Policy.from_dict({**_hand(), "instruction": text})
    assert r"Reply as \boxed{Case 3}; {0} and {name!r} and a lone { are text. Policy L2-Hand." in p.text()
    assert "You are a visual assistant that follows Policy L2-Hand." in Policy.from_dict(_hand()).text()
    sampled = sample_policy(2, 0)
    assert Policy.from_json(sampled.to_json()).text() == sampled.text()


# ------------------------------------------------------------------------------------------------ CLEVR

def _clevr(root: Path, scenes: list, images=("CLEVR_val_000000.png",), raw: str | None = None) -> Path:
    (root / "scenes").mkdir(parents=True)
    for name in images:
        p = root / "images" / "val" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 32), (120, 120, 120)).save(p)
    (root / "images" / "val").mkdir(parents=True, exist_ok=True)
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(raw if raw is not None else
                                                            json.dumps({"scenes": scenes}))
    return root


def _scene(filename="CLEVR_val_000000.png", index=0, coords=(240, 160, 10)) -> dict:
    s = {"image_index": index, "image_filename": filename,
         "objects": [{"color": "cyan", "size": "small", "shape": "cube", "material": "metal",
                      "pixel_coords": list(coords)}]}
    return {k: v for k, v in s.items() if v is not None}


def test_images_with_the_same_name_in_two_folders_get_two_scene_ids(tmp_path):
    root = _clevr(tmp_path, [_scene("a/x.png", 0), _scene("b/x.png", 1)], images=("a/x.png", "b/x.png"))
    a, b = load_clevr_scenes(root)
    assert (a.scene_id, b.scene_id) == ("a/x", "b/x")
    assert Path(a.image_path).parent.name == "a" and Path(b.image_path).parent.name == "b"
    root = _clevr(tmp_path / "again", [_scene("x.png", 0), _scene("x.png", 1)], images=("x.png",))
    with pytest.raises(SceneError, match=r"scenes 0 and 1 both use image x.png"):
        load_clevr_scenes(root)


def test_non_finite_coordinates_are_refused(tmp_path):
    for i, coords in enumerate([(float("nan"), 160), (240, float("inf")), (1e400, 1)]):
        root = _clevr(tmp_path / str(i), [_scene(coords=coords)])
        with pytest.raises(SceneError, match=r"scene 0: pixel_coords .* must be finite numbers"):
            load_clevr_scenes(root)
    obj = {"shape": "cube", "color": "red", "size": "small", "material": "metal", "x": 0.5, "y": 0.5}
    with pytest.raises(SceneError, match=r"object position x is nan; it must be a finite number"):
        Scene.from_dict({"objects": [{**obj, "x": float("nan")}]})
    with pytest.raises(SceneError, match=r"aspect"):
        Scene.from_dict({"objects": [obj], "aspect": float("inf")})


def test_images_outside_the_clevr_root_are_refused(tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    root = _clevr(tmp_path / "abs", [_scene(str(outside))])
    with pytest.raises(SceneError, match=r"scene 0: image .*secret.png is outside the CLEVR folder"):
        load_clevr_scenes(root)
    root = _clevr(tmp_path / "up", [_scene("../../../secret.png")])
    with pytest.raises(SceneError, match=r"is outside the CLEVR folder"):
        load_clevr_scenes(root, require_images=False)
    root = _clevr(tmp_path / "link", [_scene("link.png")], images=())
    os.symlink(outside, root / "images" / "val" / "link.png")
    with pytest.raises(SceneError, match=r"link.png is outside the CLEVR folder"):
        load_clevr_scenes(root)


def test_short_coordinates_deep_files_and_missing_fields(tmp_path):
    root = _clevr(tmp_path / "short", [_scene(coords=(1,))])
    with pytest.raises(SceneError, match=r"scene 0: pixel_coords \[1\] must hold x and y in pixels"):
        load_clevr_scenes(root)
    root = _clevr(tmp_path / "deep", [], raw='{"scenes": ' + "[" * 5_000 + "]" * 5_000 + "}")
    with pytest.raises(SceneError, match="nested too deeply"):
        load_clevr_scenes(root)
    root = _clevr(tmp_path / "anon", [_scene(filename=None, index=None)])
    with pytest.raises(SceneError, match=r"scene 0 has no 'image_filename' \(nor 'image_index'\)"):
        load_clevr_scenes(root)
    root = _clevr(tmp_path / "noindex", [_scene(filename="gone.png", index=None)], images=())
    with pytest.raises(FileNotFoundError, match=r"CLEVR image .*gone.png is missing \(scene 0\)"):
        load_clevr_scenes(root)
    root = _clevr(tmp_path / "objs", [{**_scene(), "objects": {"0": "cube"}}])
    with pytest.raises(SceneError, match=r"scene 0: 'objects' must be a list"):
        load_clevr_scenes(root)
