"""Running a learner's function on the hidden cases and wording the outcome.

Each case runs on a copy of its input, under a time limit where the platform allows one. Whatever the function
does (raises, loops, returns the wrong type), the outcome is a `Result`: a pass line, or the failing input, the
expected and the returned value and a hint. Never a traceback.
"""
from __future__ import annotations

import copy
import html
import signal
import textwrap
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from ..tasks.clevr.scenes import short_repr
from .graders import Case, Exercise

TIME_LIMIT = 10.0  # seconds per hidden case; the references take milliseconds


@dataclass
class Result:
    """What `check` answers: `passed`, and a message in plain words (also its str, repr and notebook display)."""
    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour, border = ("#e6f4ea", "#34a853") if self.passed else ("#fdecea", "#d93025")
        return (f'<pre style="background:{colour};border-left:4px solid {border};padding:8px;'
                f'white-space:pre-wrap">{html.escape(self.message)}</pre>')


class TooSlow(BaseException):
    """Raised inside a learner's function when its time is up; a BaseException so `except Exception` in the
    learner's code does not swallow it."""


@contextmanager
def time_limit(seconds: float | None):
    """Interrupt the block after `seconds` with TooSlow. Only where a timer signal can be used (the main thread on
    Unix, no other timer running); elsewhere the block runs unlimited."""
    usable = (seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TooSlow

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def show(value, width: int = 300) -> str:
    """A value as a message quotes it: floats to 4 decimals, tensors and arrays as lists, cut to `width`."""
    def rounded(v):
        if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
            v = v.tolist()
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, (list, tuple)):
            return type(v)(rounded(x) for x in v)
        return v

    try:
        text = repr(rounded(value))
    except Exception:
        text = short_repr(value)
    return cut(text, width)


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def said(error: Exception) -> str:
    """An exception's text, short; even one whose str() itself fails."""
    try:
        return cut(str(error), 200)
    except Exception:
        return "(its message cannot be shown)"


def _field(label: str, text: str) -> str:
    """'  label:    text', continuation lines indented under the text."""
    head = f"  {label + ':':<10}"
    return textwrap.fill(text, 116, initial_indent=head, subsequent_indent=" " * len(head),
                         break_long_words=True, break_on_hyphens=False)


def _diagnosis(exercise: Exercise, case: Case, got) -> str | None:
    try:
        return exercise.diagnose(case, got)
    except Exception:  # a grader's guess at the mistake never hides the message
        return None


def _hint(exercise: Exercise, case: Case, got=None, returned: bool = False) -> str:
    """The most specific hint there is: a recognised mistake, else the general rule; with the case's lesson."""
    diagnosed = _diagnosis(exercise, case, got) if returned else None
    lesson = f"This case: {case.hint}." if case.hint else ""
    return " ".join(p for p in (diagnosed, lesson, None if diagnosed else exercise.hint) if p)


def _same(exercise: Exercise, got, expected) -> bool:
    try:
        return bool(exercise.same(got, expected))
    except Exception:  # an answer of another type or shape is just a wrong answer
        return False


def run_case(fn, case: Case, seconds: float | None):
    """('returned', value) | ('raised', exception) | ('slow', None) for one call on a copy of the case's input."""
    args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    try:
        with time_limit(seconds):
            return "returned", fn(*args, **kwargs)
    except TooSlow:
        return "slow", None
    except Exception as e:
        return "raised", e


def grade(exercise: Exercise, fn, seconds: float | None = TIME_LIMIT) -> Result:
    """Run `fn` on every hidden case of `exercise`; the first failure becomes the message."""
    name = exercise.name
    if not callable(fn):
        return Result(name, False, f"✗ {name}: check wants your function itself, e.g. check({name!r}, {name}); "
                                   f"got {show(fn, 80)}, of type {type(fn).__name__}")
    cases = exercise.cases()
    for i, case in enumerate(cases, 1):
        outcome, value = run_case(fn, case, seconds)
        where = f"hidden case {i} of {len(cases)}"
        if outcome == "raised" and isinstance(value, NotImplementedError):
            return Result(name, False, f"✗ {name}: not written yet (it raises NotImplementedError). Write its body "
                                       f"in place of the `raise`, then run check again.")
        if outcome == "raised":
            lines = [f"✗ {name}: {where} raised {type(value).__name__}: {said(value)}",
                     _field("input", case.shown), _field("expected", show(case.expected)),
                     _field("hint", _hint(exercise, case))]
        elif outcome == "slow":
            lines = [f"✗ {name}: {where} took longer than {seconds:g} s, so it was stopped",
                     _field("input", case.shown),
                     _field("hint", "A loop that never ends? Check that every loop moves on (a while loop's node "
                                    "changes each time round). " + exercise.hint)]
        elif not _same(exercise, value, case.expected):
            lines = [f"✗ {name}: {where} gives a wrong answer", _field("input", case.shown),
                     _field("expected", show(case.expected)), _field("got", show(value)),
                     _field("hint", _hint(exercise, case, value, returned=True))]
        else:
            continue
        return Result(name, False, "\n".join(lines))
    return Result(name, True, f"✓ {name}: all {len(cases)} hidden cases pass")
