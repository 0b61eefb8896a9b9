"""Placement: capacity, labels, stickiness, draining, determinism (a pure function, no hosts needed)."""

from __future__ import annotations

from gateway.hosts.placement import HostView, place

NONE: frozenset[str] = frozenset()


def hosts(*specs: tuple[str, int], usable: set[str] | None = None, labels: dict[str, set[str]] | None = None
          ) -> list[HostView]:
    return [HostView(name, cap, frozenset((labels or {}).get(name, set())), usable is None or name in usable)
            for name, cap in specs]


def test_new_cameras_spread_to_the_host_with_the_most_free_slots() -> None:
    p = place({f"c{i}": NONE for i in range(12)}, hosts(("a", 6), ("b", 6), ("c", 6)), {})
    assert sorted(p.load(h) for h in "abc") == [4, 4, 4]
    assert not p.unplaced and not p.moved


def test_bigger_hosts_take_more_until_free_slots_are_even() -> None:
    p = place({f"c{i}": NONE for i in range(8)}, hosts(("a", 8), ("b", 2)), {})
    assert (p.load("a"), p.load("b")) == (7, 1)  # a alone until both have 2 free, then in turn (a first)


def test_a_camera_stays_on_its_healthy_host_whatever_else_changes() -> None:
    current = {"c0": "b", "c1": "b", "c2": "b"}
    p = place({"c0": NONE, "c1": NONE, "c2": NONE, "new": NONE}, hosts(("a", 6), ("b", 6)), current)
    assert {c: p.assignment[c] for c in current} == current
    assert p.assignment["new"] == "a"
    assert not p.moved


def test_a_down_or_draining_hosts_cameras_move_and_are_reported_moved() -> None:
    current = {"c0": "a", "c1": "a", "c2": "b"}
    p = place(dict.fromkeys(current, NONE), hosts(("a", 6), ("b", 6), ("c", 6), usable={"b", "c"}), current)
    assert p.assignment["c2"] == "b"
    assert {p.assignment["c0"], p.assignment["c1"]} <= {"b", "c"} and "a" not in p.assignment.values()
    assert p.moved == ["c0", "c1"]


def test_labels_restrict_hosts_and_labelled_cameras_choose_first() -> None:
    cams = {"gpu-cam": frozenset({"gpu"}), "plain-1": NONE, "plain-2": NONE}
    p = place(cams, hosts(("a", 2), ("g", 1), labels={"g": {"gpu", "ssd"}}), {})
    assert p.assignment["gpu-cam"] == "g"  # placed before the plain cameras could take g's one slot
    assert p.assignment["plain-1"] == p.assignment["plain-2"] == "a"


def test_what_no_host_can_take_is_unplaced_never_over_capacity() -> None:
    cams = {**{f"c{i}": NONE for i in range(5)}, "gpu-cam": frozenset({"gpu"})}
    p = place(cams, hosts(("a", 2), ("b", 2)), {})
    assert p.unplaced == ["c4", "gpu-cam"]
    assert p.load("a") == p.load("b") == 2


def test_over_capacity_after_a_shrink_moves_only_the_excess() -> None:
    current = {f"c{i}": "a" for i in range(4)}
    p = place(dict.fromkeys(current, NONE), hosts(("a", 2), ("b", 4)), current)
    assert p.load("a") == 2 and p.load("b") == 2
    assert len(p.moved) == 2


def test_the_same_input_gives_the_same_placement() -> None:
    cams = {f"c{i}": NONE for i in range(7)}
    views = hosts(("a", 3), ("b", 3), ("c", 3))
    assert place(cams, views, {}).assignment == place(dict(reversed(list(cams.items()))), views, {}).assignment
