"""CLEVR-style scenes: the ontology, a seeded scene sampler, a PIL renderer and a loader for real CLEVR.

A scene is a scene graph: a list of objects, each with the four CLEVR attributes (shape, color, size,
material) and a position. Policies are evaluated on the graph, models look at the rendered image, so the
renderer draws every attribute legibly, down to 64 px: flat matte colours for rubber, a white specular
highlight and a bright rim for metal.
"""
from __future__ import annotations

import json
import math
import os
import random
import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

# The CLEVR ontology (paper App. C.1.1), in CLEVR's own order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("cube", "sphere", "cylinder"),
    "color": ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"),
    "size": ("small", "large"),
    "material": ("rubber", "metal"),
}
# CLEVR's render colours (RGB, from its properties.json).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
# Object radius as a fraction of image height.
RADIUS = {"large": 0.105, "small": 0.062}
CLEVR_SIZE = (480, 320)
BACKGROUND = (196, 196, 192)


class SceneError(ValueError):
    """A scene graph or scene file that does not fit the CLEVR ontology."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 60, 60


def short_repr(value) -> str:
    """repr() cut to a readable length and nesting, for quoting user input in an error message."""
    return _REPR.repr(value)


def _finite(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def check_attribute(attribute: str, value: str | None = None) -> None:
    """Raise a SceneError naming the valid choices if `attribute` (or its `value`) is not in the ontology."""
    if attribute not in ATTRIBUTES:
        raise SceneError(f"unknown attribute {attribute!r}; valid attributes: {', '.join(ATTRIBUTES)}")
    if value is not None and value not in ATTRIBUTES[attribute]:
        raise SceneError(f"unknown {attribute} {value!r}; valid values: {', '.join(ATTRIBUTES[attribute])}")


@dataclass(frozen=True)
class SceneObject:
    """One object: its four attributes and its centre (x, y as fractions of width and height, origin top-left)."""
    shape: str
    color: str
    size: str
    material: str
    x: float = 0.5
    y: float = 0.5

    def __post_init__(self):
        for attribute in ATTRIBUTES:
            value = getattr(self, attribute)
            if not isinstance(value, str):  # None would pass the ontology check and render as "a None cube"
                raise SceneError(f"object {attribute} is {value!r}; it must be one of "
                                 f"{', '.join(ATTRIBUTES[attribute])}")
            check_attribute(attribute, value)
        for k in ("x", "y"):
            v = getattr(self, k)
            if not _finite(v):  # NaN or Infinity would be written out as invalid JSON
                raise SceneError(f"object position {k} is {short_repr(v)}; it must be a finite number (a fraction of "
                                 f"the image)")

    def matches(self, **attrs: str) -> bool:
        """True if this object has every given attribute value, e.g. matches(color="cyan", size="small")."""
        return all(getattr(self, a) == v for a, v in attrs.items())

    def describe(self) -> str:
        return f"{self.size} {self.color} {self.material} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A scene graph. `image_path` points at a real image (CLEVR); without it the scene is rendered."""
    objects: tuple[SceneObject, ...]
    scene_id: str = ""
    image_path: str | None = None
    aspect: float = field(default=CLEVR_SIZE[0] / CLEVR_SIZE[1])

    def has(self, **attrs: str) -> bool:
        """Is there an object with all these attribute values?"""
        for a, v in attrs.items():
            check_attribute(a, v)
        return any(o.matches(**attrs) for o in self.objects)

    def count(self, **attrs: str) -> int:
        for a, v in attrs.items():
            check_attribute(a, v)
        return sum(o.matches(**attrs) for o in self.objects)

    def describe(self) -> str:
        """Objects left to right, e.g. 'a large red metal cube, a small cyan rubber sphere'."""
        objs = sorted(self.objects, key=lambda o: (o.x, o.y))
        return ", ".join(f"a {o.describe()}" for o in objs)

    def to_dict(self) -> dict:
        return {"scene_id": self.scene_id, "image_path": self.image_path, "aspect": self.aspect,
                "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        """A scene from its to_dict() form; raises SceneError saying what is wrong."""
        if not isinstance(d, dict) or not isinstance(d.get("objects"), list):
            raise SceneError("a scene dict needs an 'objects' list")
        try:
            objects = tuple(SceneObject(**o) for o in d["objects"])
        except TypeError as e:
            raise SceneError(f"bad scene object ({e}); each object needs shape, color, size, material, x, y") from e
        scene_id, image_path = d.get("scene_id", ""), d.get("image_path")
        if not isinstance(scene_id, str) or not isinstance(image_path, (str, type(None))):
            raise SceneError(f"scene_id must be a string and image_path a string or null; got {short_repr(scene_id)} "
                             f"and {short_repr(image_path)}")
        aspect = d.get("aspect", CLEVR_SIZE[0] / CLEVR_SIZE[1])
        if not _finite(aspect) or aspect <= 0:
            raise SceneError(f"scene {scene_id!r}: aspect is {short_repr(aspect)}; it must be a positive finite "
                             f"number (width / height)")
        return cls(objects, scene_id, image_path, aspect)


# ----------------------------------------------------------------------------------------------- sampling

def _fits(x: float, y: float, r: float, placed: list[tuple[float, float, float]], aspect: float, gap: float) -> bool:
    # distances measured in units of image height, so circles stay round whatever the aspect
    return all(((x - px) * aspect) ** 2 + (y - py) ** 2 >= (r + pr + gap) ** 2 for px, py, pr in placed)


def sample_scene(rng: random.Random | int, min_objects: int = 3, max_objects: int = 10, scene_id: str = "",
                 aspect: float = CLEVR_SIZE[0] / CLEVR_SIZE[1], gap: float = 0.02) -> Scene:
    """Sample a scene of `min_objects`..`max_objects` objects with uniform attributes and no overlaps."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    if not 1 <= min_objects <= max_objects:
        raise SceneError(f"need 1 <= min_objects <= max_objects, got {min_objects}..{max_objects}")
    n = rng.randint(min_objects, max_objects)
    placed: list[tuple[float, float, float]] = []
    objects = []
    for _ in range(n):
        size = rng.choice(ATTRIBUTES["size"])
        r = RADIUS[size]
        for _try in range(200):
            x = rng.uniform(r / aspect + 0.01, 1 - r / aspect - 0.01)
            y = rng.uniform(r + 0.01, 1 - r - 0.01)
            if _fits(x, y, r, placed, aspect, gap):
                break
        else:  # crowded: keep the objects placed so far (still >= min_objects in practice)
            if len(objects) >= min_objects:
                break
            raise SceneError(f"could not place {n} objects without overlap; lower max_objects")
        placed.append((x, y, r))
        objects.append(SceneObject(rng.choice(ATTRIBUTES["shape"]), rng.choice(ATTRIBUTES["color"]), size,
                                   rng.choice(ATTRIBUTES["material"]), round(x, 4), round(y, 4)))
    return Scene(tuple(objects), scene_id=scene_id, aspect=aspect)


def sample_scenes(n: int, seed: int, prefix: str = "scene", progress: bool = False, **kw) -> list[Scene]:
    """`n` scenes from one seed; scene i is the same whatever n is (each has its own sub-seed)."""
    from tqdm.auto import tqdm

    return [sample_scene(random.Random(f"{seed}/{i}"), scene_id=f"{prefix}{i:06d}", **kw)
            for i in tqdm(range(n), desc="sample scenes", disable=not progress)]


# ---------------------------------------------------------------------------------------------- rendering

def _shade(rgb, f: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, int(round(c * f)))) for c in rgb)


def _draw_object(d: ImageDraw.ImageDraw, o: SceneObject, cx: float, cy: float, r: float) -> None:
    """Draw one object centred at (cx, cy) with radius r (pixels, supersampled canvas)."""
    base = COLOR_RGB[o.color]
    metal = o.material == "metal"
    outline = _shade(base, 1.45) if metal else _shade(base, 0.55)
    ow = max(1, int(r * (0.16 if metal else 0.08)))
    if o.shape == "sphere":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=base, outline=outline, width=ow)
    elif o.shape == "cube":
        s = r * 0.86
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=base, outline=outline, width=ow)
        # a darker side face makes it read as a box
        d.polygon([(cx + s, cy - s), (cx + s * 1.25, cy - s * 1.25), (cx + s * 1.25, cy + s * 0.75), (cx + s, cy + s)],
                  fill=_shade(base, 0.6))
    else:  # cylinder: body plus an elliptical top face
        w, h, e = r * 0.78, r, r * 0.32
        d.rectangle([cx - w, cy - h + e, cx + w, cy + h - e], fill=base)
        d.ellipse([cx - w, cy + h - 2 * e, cx + w, cy + h], fill=base, outline=outline, width=ow)
        d.rectangle([cx - w, cy - h + e, cx + w, cy + h - e], fill=base)
        d.line([(cx - w, cy - h + e), (cx - w, cy + h - e)], fill=outline, width=ow)
        d.line([(cx + w, cy - h + e), (cx + w, cy + h - e)], fill=outline, width=ow)
        d.ellipse([cx - w, cy - h, cx + w, cy - h + 2 * e], fill=_shade(base, 1.25), outline=outline, width=ow)
    if metal:  # specular highlight: the cue for "metal"
        hr = r * 0.3
        hx, hy = cx - r * 0.35, cy - r * 0.35
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=(255, 255, 255))


def render_scene(scene: Scene, size: tuple[int, int] | int = CLEVR_SIZE, supersample: int = 3) -> Image.Image:
    """Render a scene graph to an RGB image of `size` (width, height), or (size*aspect, size) for an int.

    Drawn `supersample` times larger and downscaled, so small sizes stay antialiased and legible.
    Far objects (small y) are drawn first.
    """
    if isinstance(size, int):
        size = (int(round(size * scene.aspect)), size)
    W, H = size
    S = supersample
    img = Image.new("RGB", (W * S, H * S), BACKGROUND)
    d = ImageDraw.Draw(img)
    for o in sorted(scene.objects, key=lambda o: o.y):
        _draw_object(d, o, o.x * W * S, o.y * H * S, RADIUS[o.size] * H * S)
    return img.reduce(S) if S > 1 else img  # box-filter downscale: fast and antialiased


def scene_image(scene: Scene, size: tuple[int, int] | int | None = None) -> Image.Image:
    """The scene's image: the real one if it has `image_path` (resized to `size` if given), else rendered."""
    if scene.image_path:
        p = Path(scene.image_path)
        if not p.exists():
            raise FileNotFoundError(f"scene {scene.scene_id!r}: image {p} is missing; check the CLEVR images folder")
        try:
            img = Image.open(p).convert("RGB")
        except (OSError, SyntaxError) as e:  # PIL: UnidentifiedImageError / truncated file
            raise SceneError(f"scene {scene.scene_id!r}: {p} is not a readable image ({e}); re-download it, or "
                             f"leave that scene out") from None
        if size is not None:
            if isinstance(size, int):
                size = (int(round(size * img.width / img.height)), size)
            img = img.resize(size, Image.LANCZOS)
        return img
    return render_scene(scene, size if size is not None else CLEVR_SIZE)


def crop_object(scene: Scene, index: int, image: Image.Image | None = None, pad: float = 1.35) -> Image.Image:
    """Crop object `index` out of the scene image (a square box `pad` times its radius around its centre)."""
    if not 0 <= index < len(scene.objects):
        raise IndexError(f"scene {scene.scene_id!r} has {len(scene.objects)} objects; no object {index}")
    image = image if image is not None else scene_image(scene)
    o = scene.objects[index]
    W, H = image.size
    r = int(round(RADIUS[o.size] * H * pad))
    cx, cy = int(round(o.x * W)), int(round(o.y * H))
    return image.crop((cx - r, cy - r, cx + r, cy + r))


def attribute_crop(attribute: str, value: str, size: int = 48, seed: int = 0) -> Image.Image:
    """A small image that shows one attribute value: a single object with that value (the other attributes
    fixed, so the crop demonstrates only `value`). Used for -M policies' policy images."""
    check_attribute(attribute, value)
    neutral = {"shape": "sphere" if attribute != "shape" else value,
               "color": "gray" if attribute != "color" else value,
               "size": "large" if attribute != "size" else value,
               "material": "rubber" if attribute != "material" else value}
    if attribute == "color":
        neutral["shape"] = "cube"
    scene = Scene((SceneObject(**neutral, x=0.5, y=0.5),), scene_id=f"crop-{attribute}-{value}", aspect=1.0)
    # a fixed window (the large radius) so that a small object looks small in its crop
    img = render_scene(scene, (size * 4, size * 4))
    r = RADIUS["large"] * size * 4 * 1.35
    c = size * 2
    return img.crop((int(c - r), int(c - r), int(c + r), int(c + r))).resize((size, size), Image.LANCZOS)


# ------------------------------------------------------------------------------------------- real CLEVR

def load_clevr_scenes(root: str | Path, split: str = "val", limit: int | None = None,
                      require_images: bool = True) -> list[Scene]:
    """Load real CLEVR scene graphs from `root` (the CLEVR_v1.0 folder: scenes/CLEVR_{split}_scenes.json and
    images/{split}/) into our Scene type. Positions come from CLEVR's pixel_coords (on its 480x320 frames).
    A scene's id is its image path under images/{split}/ without the suffix ('a/x.png' -> 'a/x'), and its image
    must lie inside `root`: absolute paths and links that lead out of it are refused."""
    root = Path(root)
    path = root / "scenes" / f"CLEVR_{split}_scenes.json"
    if not path.exists():
        raise FileNotFoundError(f"no CLEVR scene file at {path}; pass the CLEVR_v1.0 folder and a split "
                                f"that has scenes (train or val)")
    try:
        data = json.loads(path.read_text())
        raw_scenes = data["scenes"]
    except RecursionError:
        raise SceneError(f"{path} is nested too deeply to be a CLEVR scene file (expected {{'scenes': [...]}})") \
            from None
    except (ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or text that is not UTF-8
        raise SceneError(f"{path} is not a CLEVR scene file (expected {{'scenes': [...]}}): {e}") from None
    if not isinstance(raw_scenes, list):
        raise SceneError(f"{path}: 'scenes' is a {type(raw_scenes).__name__}; a CLEVR scene file holds a list of "
                         f"scenes ({{'scenes': [{{'image_filename': ..., 'objects': [...]}}, ...]}})")
    images, inside = root / "images" / split, root.resolve()
    scenes, first_use = [], {}  # scene id -> (its scene number, its image_filename)
    for i, s in enumerate(raw_scenes[:limit]):
        where = f"{path}: scene {i}"
        name = s.get("image_filename") if isinstance(s, dict) else None
        if not isinstance(name, str) or not name:
            index = "nor 'image_index'" if not isinstance(s, dict) or "image_index" not in s else \
                f"its 'image_index' is {short_repr(s['image_index'])}"
            raise SceneError(f"{where} has no 'image_filename' ({index}); each CLEVR scene names its image file "
                             f"under {images}, such as CLEVR_{split}_000000.png")
        image_path = images / name
        try:
            outside = not image_path.resolve().is_relative_to(inside)
        except (OSError, RuntimeError, ValueError) as e:  # a link loop, a NUL in the name
            raise SceneError(f"{where}: image {short_repr(name)} cannot be resolved ({e})") from None
        if outside:
            raise SceneError(f"{where}: image {image_path} is outside the CLEVR folder {root}; keep the images "
                             f"in {images} (absolute paths and links that lead out of it are refused)")
        if require_images and not image_path.is_file():
            raise FileNotFoundError(f"CLEVR image {image_path} is missing (scene {i}); put the CLEVR_v1.0 images "
                                    f"in {images}, or build without --clevr-root to render the scenes instead")
        scene_id = Path(os.path.relpath(image_path, images)).with_suffix("").as_posix()
        if scene_id in first_use:
            j, other = first_use[scene_id]
            both = f"both use image {name}" if other == name else f"({other} and {name}) both get id {scene_id!r}"
            raise SceneError(f"{path}: scenes {j} and {i} {both}; each scene needs its own image (remove the "
                             f"repeated scene or rename its image)")
        first_use[scene_id] = (i, name)
        if not isinstance(s.get("objects"), list):
            raise SceneError(f"{where}: 'objects' must be a list of objects with shape, color, size, material and "
                             f"pixel_coords; got {short_repr(s.get('objects'))}")
        objects = []
        for k, o in enumerate(s["objects"]):
            try:
                objects.append(_clevr_object(o))
            except SceneError as e:
                raise SceneError(f"{where}: {e} (object {k})") from None
        scenes.append(Scene(tuple(objects), scene_id=scene_id, image_path=str(image_path)))
    return scenes


def _clevr_object(o) -> SceneObject:
    """One CLEVR object: its attributes, and its pixel_coords as fractions of CLEVR's 480x320 frame."""
    fields = ("shape", "color", "size", "material", "pixel_coords")
    if not isinstance(o, dict) or not all(k in o for k in fields):
        raise SceneError(f"an object needs {', '.join(fields)}; got {short_repr(o)}")
    xy = o["pixel_coords"]
    if not isinstance(xy, list) or len(xy) < 2:
        raise SceneError(f"pixel_coords {short_repr(xy)} must hold x and y in pixels, like CLEVR's [240, 160, 11.2]")
    if not (_finite(xy[0]) and _finite(xy[1])):
        raise SceneError(f"pixel_coords {short_repr(xy)}: x and y must be finite numbers")
    return SceneObject(o["shape"], o["color"], o["size"], o["material"],
                       round(xy[0] / CLEVR_SIZE[0], 4), round(xy[1] / CLEVR_SIZE[1], 4))
