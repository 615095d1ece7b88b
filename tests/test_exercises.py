"""Graded exercises: references pass, stubs and wrong answers fail with a message (never an exception), and the
exact McNemar test on tables worked by hand."""
import inspect
import json
import signal
import sys
import tomllib
from pathlib import Path

import pytest

from mpi_kit import exercises
from mpi_kit.exercises import ExerciseError, check, names, reference, stub
from mpi_kit.stats import discordant, mcnemar_exact

ROOT = Path(__file__).resolve().parent.parent


def paired(only_a, only_b, both=0, neither=0):
    """Outcomes of two methods on the same rows, with this many rows right for A only, B only, both, neither."""
    rows = [(1, 0)] * only_a + [(0, 1)] * only_b + [(1, 1)] * both + [(0, 0)] * neither
    return [bool(a) for a, _ in rows], [bool(b) for _, b in rows]


# ------------------------------------------------------------------------------------------------ McNemar

@pytest.mark.parametrize("only_a, only_b, p", [
    (0, 6, 0.03125),               # 2 / 2^6
    (1, 1, 1.0),                   # 2 * 3/4, capped at 1
    (2, 9, 2 * (1 + 11 + 55) / 2 ** 11),  # 0.0654...
    (0, 0, 1.0),                   # no discordant rows
    (9, 2, 2 * (1 + 11 + 55) / 2 ** 11),  # symmetric
])
def test_mcnemar_exact_on_known_tables(only_a, only_b, p):
    a, b = paired(only_a, only_b, both=7, neither=3)
    assert discordant(a, b) == (only_a, only_b)
    assert mcnemar_exact(a, b) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_counts_only_discordant_rows_and_refuses_unpaired_lists():
    assert mcnemar_exact(*paired(2, 9)) == mcnemar_exact(*paired(2, 9, both=50, neither=40))
    assert round(mcnemar_exact(*paired(2, 9)), 4) == 0.0654
    with pytest.raises(ValueError, match="one per row"):
        mcnemar_exact([True, False], [True])


# ------------------------------------------------------------------------------------------------ the API

def test_every_reference_passes_its_grader():
    for name in names():
        result = check(name, reference(name))
        assert result.passed, result.message
        assert result.message.startswith(f"✓ {name}: all ") and "reference answer" in result.message


def test_every_stub_fails_with_a_message_and_matches_its_reference_signature():
    for name in names():
        result = check(name, stub(name))
        assert not result.passed and not result
        assert result.message.startswith(f"✗ {name}: not written yet")
        assert list(inspect.signature(stub(name)).parameters) == list(inspect.signature(reference(name)).parameters)
        assert stub(name).__doc__


def test_exercises_cover_the_brief():
    assert names() == ["walk_policy", "vmcpt_labels", "completion_labels", "format_reward", "accuracy_reward",
                       "pooled_advantage", "wilson_interval", "mcnemar_exact"]
    with pytest.raises(ExerciseError, match="no exercise named 'pooled'.*pooled_advantage"):
        check("pooled", reference("pooled_advantage"))


def test_a_learners_own_pass_says_nothing_about_the_reference():
    ref = reference("wilson_interval")
    result = check("wilson_interval", lambda k, n: ref(k, n))
    assert result.passed and result.message == "✓ wilson_interval: all 7 hidden cases pass"
    assert "✓" in result._repr_html_() and str(result) == repr(result) == result.message


# ------------------------------------------------------------------------------------------------ wrong answers

def per_half(rewards, G):
    """A classic mistake: normalise each half on its own instead of pooling the 2G rewards."""
    from mpi_kit.advantages import per_half_advantages

    return per_half_advantages(rewards, G).tolist()


def population_std(rewards, G):
    """Another: pooled, but with the population std (ddof=0)."""
    import numpy as np

    out = []
    for s in range(0, len(rewards), 2 * G):
        g = np.array(rewards[s:s + 2 * G])
        out += ((g - g.mean()) / (g.std() + 1e-4)).tolist()
    return out


def test_per_half_advantages_fail_naming_the_input_and_the_pooling():
    result = check("pooled_advantage", per_half)
    assert not result.passed
    assert "hidden case 1 of 7 gives a wrong answer" in result.message
    assert "rewards=[0.0, 0.0, 1.0, 1.0], G=2" in result.message
    assert "expected: [-0.8659, -0.8659, 0.8659, 0.8659]" in result.message and "got:      [0.0, 0.0, 0.0, 0.0]" \
        in result.message
    assert "pools both halves" in result.message


def test_population_std_fails_with_the_ddof_hint():
    result = check("pooled_advantage", population_std)
    assert not result.passed and "ddof=1" in result.message and "rewards=" in result.message


def test_an_exception_is_a_message_with_the_input_not_a_traceback():
    def walk(policy, scene):
        return policy.conditions["no such id"]

    result = check("walk_policy", walk)
    assert not result.passed
    assert "hidden case 1 of" in result.message and "raised KeyError: 'no such id'" in result.message
    assert "input:    policy L1-" in result.message and "hint:" in result.message
    assert "Traceback" not in result.message


def test_common_mistakes_get_their_own_hint():
    assert "swap them" in check("walk_policy", swap_walk).message
    assert "condition id, not a case" in check("walk_policy", lambda p, s: p.root).message
    keep_padding = lambda ids, mask, visual: [-100 if i in visual else i for i in ids]
    assert "attention_mask is 0" in check("vmcpt_labels", keep_padding).message
    full_sequence = lambda p, c, n: p + c + [-100] * (n - len(p) - len(c))
    assert "full-sequence SFT" in check("completion_labels", full_sequence).message
    one_sided = lambda a, b: reference("mcnemar_exact")(a, b) / 2
    assert "two-sided" in check("mcnemar_exact", one_sided).message
    se = lambda k, n: (k / n * (1 - k / n) / n) ** 0.5
    wald = lambda k, n: (k / n - 1.96 * se(k, n), k / n + 1.96 * se(k, n))
    assert "Wald" in check("wilson_interval", wald).message
    always_one = lambda completions, **kw: [1.0] * len(completions)
    message = check("format_reward", always_one).message
    assert "hidden case 2 of" in message and "I hope this helps" in message and "after the box" in message


def swap_walk(policy, scene):
    """A walk that takes the wrong edge at every condition."""
    node = policy.root
    while node in policy.conditions:
        c = policy.conditions[node]
        node = c.no if exercises.holds(c, scene) else c.yes
    return node


def test_wrong_types_and_non_functions_are_messages():
    assert "not a single number" in check("accuracy_reward", lambda completions, case, **kw: 1.0).message
    assert "check wants your function itself" in check("vmcpt_labels", [1, 2]).message
    assert "got:      None" in check("wilson_interval", lambda k, n: None).message


def test_the_learners_function_gets_a_copy_of_each_input():
    def destructive(rewards, G):
        answer = reference("pooled_advantage")(rewards, G)
        rewards.clear()
        return answer

    assert check("pooled_advantage", destructive).passed
    assert check("pooled_advantage", reference("pooled_advantage")).passed


def test_a_slow_function_is_stopped_with_a_message_and_the_timer_is_restored():
    def forever(policy, scene):
        while True:
            try:
                pass
            except Exception:  # the time limit is not an Exception, so this does not swallow it
                pass

    handler = signal.getsignal(signal.SIGALRM)
    result = check("walk_policy", forever, time_limit=0.2)
    assert not result.passed and "took longer than 0.2 s" in result.message and "never ends" in result.message
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_withheld_solutions_are_named_with_the_way_on(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi_kit.exercises.solutions", None)  # as if solutions.py were deleted
    with pytest.raises(ExerciseError, match=r"solutions.py is absent.*delete the line `walk_policy = reference"):
        reference("walk_policy")
    assert not check("walk_policy", stub("walk_policy")).passed  # grading needs no solutions


# ------------------------------------------------------------------------------------------------ where they live

def test_notebook_exercise_cells_name_known_exercises_in_their_notebook():
    graded = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for c in json.loads(path.read_text())["cells"]:
            if c["cell_type"] == "code" and c["source"].startswith("check("):
                graded[c["source"].split('"')[1]] = path.stem
    assert set(exercises.names()) <= set(graded)  # every exercise is graded in its notebook
    for name, notebook in graded.items():
        assert exercises.EXERCISES[name].notebook == notebook


def test_the_exercises_ship_in_the_wheel():
    """pyproject lists packages by hand: without this entry `pip install` (Colab) leaves the exercises out."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "mpi_kit.exercises" in packages


def test_completion_labels_match_trls_collator():
    """The grader's completion-only labels are what TRL's vision-language collator gives a prompt/completion row."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from mpi_kit.exercises.graders import completion_labels_cases, trl_completion_labels

    class Ids:  # a processor whose "text" is already token ids
        def __call__(self, text, padding, padding_side, return_tensors, images=None, add_special_tokens=False):
            n = max(len(t) for t in text)
            pad = lambda t: ([0] * (n - len(t)) + t, [0] * (n - len(t)) + [1] * len(t)) if padding_side == "left" \
                else (t + [0] * (n - len(t)), [1] * len(t) + [0] * (n - len(t)))
            ids, mask = zip(*(pad(list(t)) for t in text))
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    collator = DataCollatorForVisionLanguageModeling(Ids(), completion_only_loss=True)
    cases = [c.args for c in completion_labels_cases()]
    longest = max(len(p) + len(c) for p, c, _ in cases)
    batch = collator([{"prompt": p, "completion": c, "images": []} for p, c, _ in cases])
    for (p, c, _), labels in zip(cases, batch["labels"].tolist()):
        assert labels == trl_completion_labels(p, c, longest)
