"""Which request gets which fault: the selectors of each spec, and their counters. Sans-IO.

A spec considers the requests its ``route=`` (a path prefix) and ``model=`` (a glob on the JSON
request body's ``model``) let through, and counts them from 1. Of those, ``after=N`` lets the first
N pass, ``every=N`` picks the N-th, 2N-th... (counted from the first request after ``after``), and
``rate=R`` picks each with probability R from a generator seeded by ``seed=`` (fixed runs for a
fixed seed). With several specs, the first that picks a request wins; every spec counts the
requests it considers whether or not an earlier one won them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import random
import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

    from wirecap.faults.spec import FaultSpec

#: The request body bytes searched for ``"model"``: it comes first or early in every provider's
#: request, and a selector must not cost a parse of a large prompt.
MODEL_SCAN: Final = 64 * 1024
_MODEL: Final = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){0,200})"')


def request_model(body: bytes) -> str | None:
    """The ``model`` string of a JSON request body, found without parsing the whole body."""
    match = _MODEL.search(body, 0, MODEL_SCAN)
    return match.group(1).decode("utf-8", "replace") if match else None


@dataclasses.dataclass(slots=True)
class _Selector:
    spec: FaultSpec
    rng: random.Random | None
    seen: int = 0

    def picks(self, path: str, model: str | None) -> bool:
        spec = self.spec
        if spec.route is not None and not path.startswith(spec.route):
            return False
        if spec.model is not None and (model is None or not fnmatch.fnmatchcase(model, spec.model)):
            return False
        self.seen += 1
        past = self.seen - spec.after
        if past <= 0 or past % spec.every:
            return False
        return self.rng is None or self.rng.random() < (spec.rate or 0)


class FaultPlan:
    """The faults of one server, and which request gets which (:meth:`choose`)."""

    def __init__(self, specs: Iterable[FaultSpec]) -> None:
        self.specs = tuple(specs)
        self._selectors = [
            _Selector(s, random.Random(s.seed) if s.rate is not None else None) for s in self.specs
        ]
        #: Whether :meth:`choose` needs the request body (a ``model=`` selector).
        self.needs_body = any(s.model is not None for s in self.specs)

    def choose(self, target: str, body: bytes = b"") -> FaultSpec | None:
        """The fault for a request to ``target`` (path and query) with ``body``, or None."""
        path = target.partition("?")[0]
        model = request_model(body) if self.needs_body else None
        chosen = None
        for selector in self._selectors:
            if selector.picks(path, model) and chosen is None:
                chosen = selector.spec
        return chosen
