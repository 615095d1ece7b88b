import random

import pytest

from mpi_kit.tasks.clevr.policy import Policy, PolicyError, override_policy, sample_policies, sample_policy
from mpi_kit.tasks.clevr.scenes import Scene, SceneObject, sample_scene

O = SceneObject


def hand_policy() -> Policy:
    """Condition 1: cyan object? yes -> 1.1 (small cyan object?), no -> 1.2 (metal object?)."""
    return Policy.from_dict({"name": "L2-Hand", "depth": 2, "cases": ["Case 0", "Case 1", "Case 2", "Case 3"],
                             "conditions": [
                                 {"id": "1", "attribute": "color", "value": "cyan", "yes": "1.1", "no": "1.2"},
                                 {"id": "1.1", "attribute": "size", "value": "small", "yes": "Case 2", "no": "Case 0"},
                                 {"id": "1.2", "attribute": "material", "value": "metal", "yes": "Case 3",
                                  "no": "Case 1"}]})


@pytest.mark.parametrize("objects,case,path", [
    ([O("cube", "cyan", "small", "rubber")], "Case 2", ["1", "1.1"]),
    # a small object and a cyan object, but no small *cyan* one: conditions stack along yes edges
    ([O("cube", "cyan", "large", "rubber"), O("sphere", "red", "small", "rubber")], "Case 0", ["1", "1.1"]),
    ([O("cube", "red", "large", "metal")], "Case 3", ["1", "1.2"]),
    ([O("cube", "red", "large", "rubber"), O("sphere", "gray", "small", "rubber")], "Case 1", ["1", "1.2"]),
])
def test_evaluate_hand_built(objects, case, path):
    p = hand_policy()
    assert p.evaluate(Scene(tuple(objects))) == (case, path)
    assert p.conditions["1.1"].subject == {"color": "cyan", "size": "small"}
    assert p.question("1.1") == "Is there a small cyan object in the image?"


def test_true_edge_constraint_and_unique_cases_over_many_trees():
    rng = random.Random(0)
    for depth in (2, 4, 6):
        for _ in range(60 if depth < 6 else 25):
            p = sample_policy(depth, rng)
            for c in p.conditions.values():
                if c.yes in p.conditions:
                    assert p.conditions[c.yes].attribute != c.attribute
            leaves = [t for c in p.conditions.values() for t in (c.yes, c.no) if t not in p.conditions]
            assert sorted(leaves, key=lambda s: int(s.split()[1])) == p.cases  # every leaf its own case
            assert len(p.cases) <= 2 ** depth
            assert max(len(cid.split(".")) for cid in p.conditions) <= depth
            assert depth < 6 or len(p.cases) >= 32


def test_every_path_is_reachable_and_gold_cot_cites_it():
    p = sample_policy(4, 5)
    seen = set()
    for i in range(400):
        s = sample_scene(i)
        case, path = p.evaluate(s)
        seen.add(case)
        cot = p.gold_cot(s)
        assert cot.startswith("<think>") and cot.endswith("\\boxed{" + case + "}")
        assert [c for c in path if f"Condition {c}:" in cot] == path
    assert len(seen) >= 12  # balanced conditions: most of the 16 cases occur in 400 scenes


def test_render_text_sections_refer_to_each_other():
    p = sample_policy(4, 1)
    text = p.text()
    assert text.startswith(f"Policy: {p.name}")
    for cid, c in p.conditions.items():
        assert f"# Condition {cid}\n" in text
        for t in (c.yes, c.no):
            assert (f"go to Condition {t}." in text) if t in p.conditions else (f"the response is {t}." in text)
    assert not p.images()


def test_multimodal_rendering():
    p = sample_policy(4, 2, variant="M", num_images=3)
    parts = p.render()
    images = [x for x in parts if not isinstance(x, str)]
    assert len(images) == len(p.image_values) == 3
    text = p.text()
    assert text.count("<image>") == 3 and "# Policy Images" in text
    for k, (attr, value) in enumerate(p.image_values, start=1):
        assert f"Policy Image {k} shows a {attr}" in text
        # the value shown as an image is not also written as a word in the conditions
        users = [c for c in p.conditions.values() if c.subject.get(attr) == value]
        assert users and all(f"the {attr} shown in Policy Image {k}" in p.question(c.id, p.image_index())
                             for c in users)
    # the -T rendering of the same tree has no images
    assert all(isinstance(x, str) for x in p.render(variant="T"))


def test_json_roundtrip(tmp_path):
    p = sample_policy(6, 3, variant="M")
    path = tmp_path / "p.json"
    p.to_json(path)
    q = Policy.from_json(path)
    assert q.to_dict() == p.to_dict()
    s = sample_scene(9)
    assert q.evaluate(s) == p.evaluate(s) and q.text() == p.text()


def _bad(mutate):
    d = hand_policy().to_dict()
    mutate(d)
    return d


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["conditions"][0].update(attribute="weight"), "unknown attribute 'weight'"),
    (lambda d: d["conditions"][0].update(value="pink"), "unknown color 'pink'"),
    (lambda d: d["conditions"].append(dict(d["conditions"][1])), "duplicate condition id '1.1'"),
    (lambda d: d["conditions"][1].pop("no"), "missing no"),
    (lambda d: d["conditions"][2].update(no="1"), "cycle"),
    (lambda d: d["conditions"][1].update(yes="Case 9"), "unknown case 'Case 9'"),
    (lambda d: d["conditions"][1].update(yes="1.7"), "neither a condition id nor a case"),
    (lambda d: d.update(name=""), "no name"),
    (lambda d: d.pop("name"), "missing 'name'"),
    (lambda d: d["conditions"][1].update(attribute="color", value="red"), "yes edge and tests color again"),
    (lambda d: d["conditions"][2].update(yes="Case 2"), "used by two leaves"),
    (lambda d: d["conditions"][0].update(no="Case 1"), "not reachable"),
])
def test_bad_policies_get_clear_errors(mutate, message):
    with pytest.raises(PolicyError, match=message):
        Policy.from_dict(_bad(mutate))


def test_bad_json_text():
    with pytest.raises(PolicyError, match="does not parse"):
        Policy.from_json("{not json")
    with pytest.raises(PolicyError, match="no policy file"):
        Policy.from_json("/nonexistent/policy.json")


def test_names_unique_and_override_keeps_name():
    ps = sample_policies(10, 4, seed=0)
    assert len({p.name for p in ps}) == 10 and all(p.name.startswith("L4-") for p in ps)
    assert [p.to_dict() for p in ps] == [p.to_dict() for p in sample_policies(10, 4, seed=0)]
    new = override_policy(ps[0], 1)
    assert new.name == ps[0].name and new.depth == ps[0].depth
    assert new.to_dict()["conditions"] != ps[0].to_dict()["conditions"]
    assert any(new.evaluate(sample_scene(i))[0] != ps[0].evaluate(sample_scene(i))[0] for i in range(50))


def test_case_pool_names_cases_from_the_wider_range_and_keeps_the_tree():
    """Base pretraining draws case numbers from 0..63 so short policies also name the cases of deep ones."""
    seen = set()
    for seed in range(40):
        plain, wide = sample_policy(2, seed), sample_policy(2, seed, case_pool=64)
        strip = lambda p: [(c.id, c.attribute, c.value, c.yes.startswith("Case"), c.no.startswith("Case"))
                           for c in p.conditions.values()]
        assert strip(plain) == strip(wide)  # the same tree, only the outcomes renamed
        nums = [int(c.split()[1]) for c in wide.cases]
        assert len(set(nums)) == len(nums) == len(plain.cases) and all(0 <= k < 64 for k in nums)
        seen.update(nums)
        s = sample_scene(seed)
        assert wide.gold_cot(s).endswith("\\boxed{" + wide.evaluate(s)[0] + "}")
    assert max(seen) >= 16  # cases an N = 2 tree never names without the pool
    with pytest.raises(PolicyError, match="case_pool=3 is smaller"):
        sample_policy(2, 0, case_pool=3)
