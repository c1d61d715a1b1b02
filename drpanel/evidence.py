"""Registries that connect checklist items to evidence, by the item's stable ``code``.

- **Evaluators** decide an ``automatic`` item of a day::

      @register("daily.full_backup")
      def full_backup(period_date: date) -> Result: ...

  An item without an evaluator is ``no_data`` ("no evidence source yet"): the panel never
  invents a pass.
- **Validators** decide whether a piece of evidence may be linked when someone ticks an
  item that ``requires_evidence``::

      @register_validator("weekly.staging_restore")
      class StagingRestores:
          def candidates(self, start: date, end: date) -> list[Evidence]: ...
          def validate(self, start: date, end: date, object_type: str, object_id: str) -> Evidence: ...

  ``validate`` raises ``EvidenceRejected`` with a reason people can read. Until a validator
  is registered for an item, ticking it is refused.

Apps register theirs at import time from their ``AppConfig.ready()``.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

log = logging.getLogger(__name__)

PASSED, FAILED, NO_DATA = "passed", "failed", "no_data"


@dataclass(frozen=True)
class Evidence:
    """A link to what proves an item: a page (``url``) and, when it is a row, its type and id."""

    label: str
    url: str = ""
    object_type: str = ""
    object_id: str = ""

    def as_dict(self) -> dict:
        return {"label": self.label[:200], "url": self.url[:500], "object_type": self.object_type[:100],
                "object_id": str(self.object_id)[:64]}


@dataclass(frozen=True)
class Result:
    """What an evaluator found for one day."""

    status: str
    summary: str
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.status not in (PASSED, FAILED, NO_DATA):
            raise ValueError(f"an evaluator result is passed, failed or no_data, not {self.status!r}")


class EvidenceRejected(Exception):
    """The evidence offered for an item does not prove it; the message says why."""


class Validator(Protocol):
    def candidates(self, start: date, end: date) -> list[Evidence]: ...

    def validate(self, start: date, end: date, object_type: str, object_id: str) -> Evidence: ...


_evaluators: dict[str, Callable[[date], Result]] = {}
_validators: dict[str, Validator] = {}


def register(code: str):
    """Decorator: ``func(period_date) -> Result`` evaluates the automatic item ``code``."""

    def decorator(func):
        if code in _evaluators and _evaluators[code] is not func:
            raise ValueError(f"an evaluator for {code!r} is already registered")
        _evaluators[code] = func
        return func

    return decorator


def register_validator(code: str):
    """Class decorator: an instance of the class validates evidence for the item ``code``."""

    def decorator(cls):
        if code in _validators and type(_validators[code]) is not cls:
            raise ValueError(f"a validator for {code!r} is already registered")
        _validators[code] = cls()
        return cls

    return decorator


def unregister(code: str) -> None:
    """Remove the evaluator and validator of ``code`` (tests)."""
    _evaluators.pop(code, None)
    _validators.pop(code, None)


def evaluator_for(code: str) -> Callable[[date], Result] | None:
    return _evaluators.get(code)


def validator_for(code: str) -> Validator | None:
    return _validators.get(code)


def evaluate(code: str, period_date: date) -> Result:
    """Run the evaluator of ``code`` for a day; a missing or crashing evaluator is ``no_data``."""
    func = _evaluators.get(code)
    if func is None:
        return Result(NO_DATA, "No evidence source yet: nothing in the panel can evaluate this item.")
    try:
        result = func(period_date)
    except Exception as exc:
        # An evaluator that crashes has proven nothing either way; say so instead of failing the item.
        log.exception("the evaluator of %s failed for %s", code, period_date)
        return Result(NO_DATA, f"The evaluator failed ({type(exc).__name__}); nothing was proven.")
    if not isinstance(result, Result):
        return Result(NO_DATA, "The evaluator returned no result; nothing was proven.")
    return result
