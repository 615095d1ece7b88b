"""Graded exercises: write one piece of TriMPI yourself and check it against the kit's own implementation.

    from mpi_kit.exercises import check, names, reference, stub
    check("pooled_advantage", my_pooled_advantage)   # ✓ ..., or the failing input, expected vs got, a hint

`stub(name)` is the empty function to fill in (its docstring says what to write), `reference(name)` the worked
solution, from `solutions.py`: a teacher may withhold that file and everything else still works.
"""
from __future__ import annotations

import importlib

from . import stubs
from .graders import EXERCISES
from .runner import TIME_LIMIT, Result, grade
from .stubs import holds


class ExerciseError(ValueError):
    """An unknown exercise name, or reference solutions that are not shipped; the message says what to do."""


def names() -> list[str]:
    """The exercises, in the order the notebooks teach them."""
    return list(EXERCISES)


def _known(name: str) -> str:
    if name not in EXERCISES:
        raise ExerciseError(f"no exercise named {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return name


def stub(name: str):
    """The function to fill in: the right signature, a docstring saying what to write, and a body that raises
    NotImplementedError."""
    return getattr(stubs, _known(name))


def reference(name: str):
    """The worked solution (from `mpi_kit/exercises/solutions.py`, imported only now)."""
    _known(name)
    try:
        solutions = importlib.import_module(".solutions", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.solutions":
            raise
        raise ExerciseError(f"the reference solutions are not part of this copy of the kit (mpi_kit/exercises/"
                            f"solutions.py is absent: your teacher kept it back). Write {name} yourself and "
                            f"delete the line `{name} = reference({name!r})`; check({name!r}, {name}) grades "
                            f"it.") from None
    return getattr(solutions, name)


def check(name: str, fn, time_limit: float | None = TIME_LIMIT) -> Result:
    """Grade `fn` on the exercise's hidden cases: a Result with `.passed` and a `.message` in plain words (the
    failing input, expected vs got, a hint). Nothing `fn` raises escapes; each case gets `time_limit` seconds."""
    result = grade(EXERCISES[_known(name)], fn, time_limit)
    if result.passed and getattr(fn, "__module__", None) == f"{__name__}.solutions":
        result.message += (f" with the kit's reference answer. Write yours, delete the line "
                           f"`{name} = reference({name!r})` and check again")
    return result


__all__ = ["names", "stub", "reference", "check", "holds", "Result", "ExerciseError", "TIME_LIMIT"]
