from hypothesis import given, settings, strategies as st

from mpi_kit.tasks.clevr.rewards import accuracy_reward, format_reward, parse_answer, total_reward

GOOD = "<think>Condition 1: Is there a cyan object? Yes, go to Condition 1.1.</think>\\boxed{Case 3}"


def test_hand_made_cases():
    conv = [{"role": "assistant", "content": GOOD}]
    assert format_reward([GOOD, conv]) == [1.0, 1.0]
    assert accuracy_reward([GOOD, conv, GOOD], case=["Case 3", "Case 3", "Case 30"]) == [1.0, 1.0, 0.0]
    bad_format = ["\\boxed{Case 3}", "<think>x</think>", "<think>a</think>\\boxed{Case 3} trailing",
                  "<think>a<think>b</think>\\boxed{Case 3}", "<think>x</think>\\boxed{Case {3}}"]
    assert format_reward(bad_format) == [0.0] * 5
    # accuracy reads the last box, exactly
    assert accuracy_reward(["\\boxed{Case 1} no, \\boxed{Case 3}", "\\boxed{case 3}", "\\boxed{ Case 3 }"],
                           case=["Case 3"] * 3) == [1.0, 0.0, 1.0]
    assert parse_answer("nothing") is None
    assert total_reward(GOOD, "Case 3") == 1.0 and abs(total_reward(GOOD, "Case 4") - 0.1) < 1e-9


ADVERSARIAL = st.sampled_from(["\\boxed{", "}", "{", "<think>", "</think>", "\\boxed{Case 3}", "\x00", "\\",
                               "Case 3", "\n", "\u202e", "😀", "\\boxed{}" * 50])
TEXTS = st.one_of(st.text(), st.lists(ADVERSARIAL | st.text(max_size=5), max_size=30).map("".join))
COMPLETIONS = st.one_of(TEXTS, TEXTS.map(lambda t: [{"role": "assistant", "content": t}]), st.none(),
                        st.integers(), st.just([]), st.just([{"role": "assistant"}]),
                        st.lists(st.dictionaries(st.text(max_size=3), st.text(max_size=3)), max_size=2))


@settings(max_examples=200, deadline=None)
@given(st.lists(COMPLETIONS, min_size=1, max_size=4), st.one_of(st.none(), st.text(max_size=8), st.just("Case 3")))
def test_rewards_never_raise(completions, gold):
    f = format_reward(completions)
    a = accuracy_reward(completions, case=[gold] * len(completions))
    assert len(f) == len(a) == len(completions)
    assert all(x in (0.0, 1.0) for x in f + a)
