"""Hostile policies and CLEVR folders get a clear PolicyError / SceneError quickly, never a traceback, a hang or
a silently wrong result: huge or deep policies are refused before the tree is built, braces in a policy's text
stay verbatim, and CLEVR scenes get unique ids, finite positions and images inside the CLEVR root only."""
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from mpi_kit.scenes import Scene, SceneError, load_clevr_scenes

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
