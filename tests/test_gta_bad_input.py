"""Malformed GTA datasets (`load_gta`, `mpi-kit gta-data --gta-root`) fail with a DataError that says what is wrong
and where, never a traceback or a silently wrong instance. Each case starts from one valid query and breaks one
thing; most were an AttributeError, TypeError, PIL or OS error before."""
import json
from pathlib import Path

import pytest
from PIL import Image

from mpi_kit.cli import main
from mpi_kit.data import DataError
from mpi_kit.tasks.gta.data import load_gta


def _query() -> dict:
    """One valid GTA query: a user turn, an OCR call on image/image_1.jpg, its result, the final answer."""
    return {"tools": [{"name": "OCR"}], "files": [{"type": "image", "path": "image/image_1.jpg"}],
            "dialogs": [{"role": "user", "content": "What does the sign say?"},
                        {"role": "assistant", "tool_calls": [
                            {"type": "function", "function": {"name": "OCR",
                                                              "arguments": {"image": "image/image_1.jpg"}}}]},
                        {"role": "tool", "name": "OCR", "content": {"type": "text", "content": "EXIT"}},
                        {"role": "assistant", "content": "EXIT"}],
            "gt_answer": ["EXIT"]}


def _dataset(root: Path, data=None, raw: bytes | None = None) -> Path:
    """root/dataset.json (the JSON of `data`, default one valid query, or `raw` bytes) and root/image/image_1.jpg."""
    (root / "image").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "image" / "image_1.jpg")
    (root / "dataset.json").write_bytes(raw if raw is not None else json.dumps(
        {"0": _query()} if data is None else data).encode())
    return root


def _call(**function) -> dict:
    """A dataset whose one tool call's `function` is replaced by `function`."""
    q = _query()
    q["dialogs"][1]["tool_calls"][0]["function"] = function
    return {"0": q}


def _edit(path: str, value) -> dict:
    """A dataset with one field of the query (a dotted path, list indices as numbers) set to `value`."""
    q = _query()
    *head, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = q
    for k in head:
        node = node[k]
    node[last] = value
    return {"0": q}


def _corrupt_image(root: Path) -> None:
    (root / "image" / "image_1.jpg").write_bytes(b"this is not a JPEG")


def _image_folder(root: Path) -> None:
    (root / "dataset.json").write_text(json.dumps(_edit("files.0.path", "image")))


def _dataset_folder(root: Path) -> None:
    (root / "dataset.json").unlink()
    (root / "dataset.json").mkdir()


# (id, dataset (data dict, raw bytes, or a function breaking a valid one), what the message must say)
CASES = [
    ("tool name int", _call(name=5, arguments={"image": "image/image_1.jpg"}), "tool name must be a string, got 5"),
    ("tool name null", _call(name=None, arguments={}), "tool name must be a string, got None"),
    ("arguments a list", _call(name="OCR", arguments=[["image", "image/image_1.jpg"]]),
     "arguments of OCR must be a JSON object"),
    ("arguments a number", _call(name="OCR", arguments=5), "arguments of OCR must be a JSON object"),
    ("arguments a JSON string of a list", _call(name="OCR", arguments="[]"), "arguments of OCR must be a JSON object"),
    ("nested arguments", _call(name="OCR", arguments={"image": {"path": "image/image_1.jpg"}}),
     "argument 'image' of OCR must be a string, number, boolean or null"),
    ("non-finite argument", _call(name="GoogleSearch", arguments={"query": "q", "k": float("nan")}),
     "argument 'k' of GoogleSearch must be a finite number"),
    ("corrupt image", _corrupt_image, r"image_1.jpg is not a readable image"),
    ("image path is a folder", _image_folder, "is a folder, not an image file"),
    ("image path not a string", _edit("files.0.path", 5), "file path must be a non-empty string"),
    ("dialogs not a list", _edit("dialogs", {"role": "user"}), "'dialogs' must be a list"),
    ("a dialog turn not an object", _edit("dialogs.2", "EXIT"), "a dialog turn is not an object"),
    ("content nested too deeply", _edit("dialogs.0.content", json.loads("[" * 500 + "]" * 500)),
     "content nests more than 20 levels deep"),
    ("tool_calls not a list", _edit("dialogs.1.tool_calls", 5), "'tool_calls' must be a list"),
    ("missing function name", _call(arguments={}), "without function.name"),
    ("query not an object", {"0": "What does the sign say?"}, "query 0: must be an object with 'files' and 'dialogs'"),
    ("JSON root a string", "queries", "expected an object of queries"),
    ("truncated dataset.json", json.dumps({"0": _query()})[:200].encode(), "is not valid JSON"),
    ("dataset.json not text", b"\xff\xd8\xff\xe0 JFIF", "is not valid JSON"),
    ("nested too deeply", b"[" * 100000, "is not valid JSON"),
    ("huge integer", ('{"0": ' + "1" * 5000 + "}").encode(), "is not valid JSON"),
    ("dataset.json a folder", _dataset_folder, "cannot read"),
]


@pytest.mark.parametrize("dataset, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_gta_dataset_is_a_data_error(tmp_path, dataset, match):
    root = _dataset(tmp_path)
    if callable(dataset):
        dataset(root)
    else:
        _dataset(root, raw=dataset) if isinstance(dataset, bytes) else _dataset(root, data=dataset)
    with pytest.raises(DataError, match=match):
        load_gta(root)


def test_the_valid_query_loads(tmp_path):
    (inst,) = load_gta(_dataset(tmp_path))
    assert inst.tool == "OCR" and inst.arguments == {"image": "image/image_1.jpg"} and inst.images[0].size == (64, 48)


def test_cli_prints_the_error_and_exits_2(tmp_path, capsys):
    root = _dataset(tmp_path / "gta")
    _corrupt_image(root)
    assert main(["gta-data", "--gta-root", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "not a readable image" in err and "Traceback" not in err
