import json

import numpy as np
import pytest
from PIL import Image

from mpi_kit.tasks.clevr.scenes import (ATTRIBUTES, COLOR_RGB, RADIUS, Scene, SceneError, SceneObject, attribute_crop,
                                        crop_object, load_clevr_scenes, render_scene, sample_scene, sample_scenes,
                                        scene_image)


def test_sampler_counts_no_overlap_and_determinism():
    for i in range(200):
        s = sample_scene(i)
        assert 3 <= len(s.objects) <= 10
        for a in s.objects:
            for b in s.objects:
                if a is b:
                    continue
                d2 = ((a.x - b.x) * s.aspect) ** 2 + (a.y - b.y) ** 2
                assert d2 >= (RADIUS[a.size] + RADIUS[b.size]) ** 2
    assert sample_scene(7) == sample_scene(7)
    assert sample_scenes(5, seed=3)[2] == sample_scenes(9, seed=3)[2]  # scene i independent of n


def test_has_and_count():
    s = Scene((SceneObject("cube", "cyan", "small", "metal", 0.2, 0.3),
               SceneObject("sphere", "red", "large", "rubber", 0.7, 0.6)))
    assert s.has(color="cyan") and s.has(color="cyan", size="small") and not s.has(color="cyan", size="large")
    assert s.count(material="rubber") == 1
    with pytest.raises(SceneError, match="unknown color 'pink'"):
        s.has(color="pink")
    with pytest.raises(SceneError, match="unknown attribute 'weight'"):
        s.has(weight="heavy")
    with pytest.raises(SceneError, match="valid values"):
        SceneObject("cone", "red", "small", "metal")


def _colour_at(img, o: SceneObject):
    W, H = img.size
    return img.getpixel((int(o.x * W + RADIUS[o.size] * H * 0.4), int(o.y * H + RADIUS[o.size] * H * 0.4)))


@pytest.mark.parametrize("size", [(96, 64), (480, 320)])
def test_render_shows_colour_and_metal(size):
    objs = tuple(SceneObject("sphere", c, "large", m, 0.1 + 0.2 * i, 0.5)
                 for i, (c, m) in enumerate([("red", "rubber"), ("blue", "metal"), ("yellow", "rubber")]))
    img = render_scene(Scene(objs), size)
    assert img.size == size
    for o in objs:  # the body keeps its CLEVR colour
        assert max(abs(a - b) for a, b in zip(_colour_at(img, o), COLOR_RGB[o.color])) < 40
    # metal has a white highlight up-left of the centre; rubber does not
    W, H = size
    r = RADIUS["large"] * H * 0.35
    hl = lambda o: img.getpixel((int((o.x * W) - r), int(o.y * H - r)))
    assert min(hl(objs[1])) > 180
    assert min(hl(objs[0])) < 120


def test_attribute_crops_differ():
    crops = {(a, v): attribute_crop(a, v) for a in ATTRIBUTES for v in ATTRIBUTES[a]}
    assert all(c.size == (48, 48) for c in crops.values())
    small, large = crops[("size", "small")], crops[("size", "large")]
    bg = lambda im: int((np.asarray(im) == np.asarray(im)[0, 0]).all(-1).sum())
    assert bg(small) > bg(large) + 300  # a small object covers less of the same window
    assert crops[("color", "red")].getpixel((24, 24)) != crops[("color", "blue")].getpixel((24, 24))


def test_crop_object():
    s = sample_scene(3)
    img = render_scene(s)
    crop = crop_object(s, 0, img)
    assert 20 < crop.width < 120 and crop.width == crop.height
    with pytest.raises(IndexError, match="has"):
        crop_object(s, 99, img)


def test_clevr_loader(tmp_path):
    """A hand-written scene file in CLEVR's format (scenes/CLEVR_val_scenes.json + images/val/)."""
    root = tmp_path / "CLEVR_v1.0"
    (root / "scenes").mkdir(parents=True)
    (root / "images" / "val").mkdir(parents=True)
    Image.new("RGB", (480, 320), (120, 120, 120)).save(root / "images" / "val" / "CLEVR_val_000000.png")
    scene = {"image_index": 0, "image_filename": "CLEVR_val_000000.png", "split": "val",
             "objects": [{"color": "cyan", "size": "small", "rotation": 10.0, "shape": "cylinder",
                          "3d_coords": [1.0, 2.0, 0.35], "material": "metal", "pixel_coords": [240, 160, 11.2]},
                         {"color": "gray", "size": "large", "rotation": 0.0, "shape": "cube",
                          "3d_coords": [-2.0, 0.5, 0.7], "material": "rubber", "pixel_coords": [96, 64, 9.0]}],
             "relationships": {}, "directions": {}}
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"info": {"split": "val"}, "scenes": [scene]}))
    [s] = load_clevr_scenes(root, "val")
    assert s.scene_id == "CLEVR_val_000000"
    assert s.objects[0] == SceneObject("cylinder", "cyan", "small", "metal", 0.5, 0.5)
    assert s.objects[1].x == pytest.approx(0.2) and s.objects[1].y == pytest.approx(0.2)
    assert scene_image(s, (96, 64)).size == (96, 64)
    assert s.has(color="cyan", material="metal")
    # missing image, missing file, wrong format: clear errors
    (root / "images" / "val" / "CLEVR_val_000000.png").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_clevr_scenes(root, "val")
    assert load_clevr_scenes(root, "val", require_images=False)[0].objects == s.objects
    with pytest.raises(FileNotFoundError, match="no CLEVR scene file"):
        load_clevr_scenes(root, "train")
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(SceneError, match="not a CLEVR scene file"):
        load_clevr_scenes(root, "val")


def test_scene_dict_roundtrip():
    s = sample_scene(11, scene_id="x")
    assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(SceneError):
        Scene.from_dict({"objects": [{"shape": "cube"}]})
