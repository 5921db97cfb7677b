"""The deadline table the proxy's watchdog enforces instead of a cancel scope per wait."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from wirecap.proxy.deadlines import Deadlines


class Item:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def expire(self) -> None:
        self.log.append(self.name)


def test_only_passed_deadlines_expire_and_each_once():
    log: list[str] = []
    deadlines = Deadlines()
    a, b, c = Item("a", log), Item("b", log), Item("c", log)
    assert deadlines.set(a, 5.0) is True  # the first: the checker must look sooner
    assert deadlines.set(b, 7.0) is False
    assert deadlines.set(c, 3.0) is True
    deadlines.expire(2.9)
    assert log == []
    deadlines.expire(5.0)
    assert sorted(log) == ["a", "c"]
    assert deadlines.next_due == 7.0 and len(deadlines) == 1
    deadlines.expire(6.0)
    assert sorted(log) == ["a", "c"]
    deadlines.expire(100.0)
    assert sorted(log) == ["a", "b", "c"] and deadlines.next_due == math.inf


def test_a_cleared_or_postponed_deadline_does_not_expire():
    log: list[str] = []
    deadlines = Deadlines()
    a, b = Item("a", log), Item("b", log)
    deadlines.set(a, 1.0)
    deadlines.set(b, 2.0)
    deadlines.clear(a)
    deadlines.set(b, 10.0)  # a later read: the deadline moves
    deadlines.expire(5.0)  # next_due was stale (1.0): one scan finds nothing
    assert log == [] and deadlines.next_due == 10.0


def test_an_item_may_set_a_new_deadline_while_expiring():
    deadlines = Deadlines()

    class Again:
        def expire(self) -> None:
            deadlines.set(self, 20.0)

    again = Again()
    deadlines.set(again, 1.0)
    deadlines.expire(1.0)
    assert deadlines.next_due == 20.0 and len(deadlines) == 1


@given(st.lists(st.tuples(st.integers(0, 9), st.floats(0, 100), st.floats(0, 100)), max_size=40))
def test_expire_matches_a_plain_model(steps):
    """Any sequence of set/expire calls: what expires is exactly what a dict of deadlines says."""
    log: list[str] = []
    items = [Item(str(i), log) for i in range(10)]
    deadlines = Deadlines()
    model: dict[str, float] = {}
    for index, deadline, now in steps:
        deadlines.set(items[index], deadline)
        model[str(index)] = deadline
        log.clear()
        deadlines.expire(now)
        due = sorted(name for name, d in model.items() if d <= now)
        assert sorted(log) == due
        for name in due:
            del model[name]
        assert deadlines.next_due <= min(model.values(), default=math.inf)
