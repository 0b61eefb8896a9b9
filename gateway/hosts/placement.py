"""Which host runs which camera: a pure function of the cameras, the hosts and where cameras run now.

Rules, in order:
1. A camera stays where it is while its host is up, not draining, has its labels and the slot
   (no churn: an unrelated change moves nothing).
2. Every other camera goes to the usable host with the most free slots among those that have all
   its labels (ties: the host listed first), cameras with more labels first (they have fewer
   choices), then by id, so the same input always gives the same placement.
3. A camera no host can take is unplaced (reported), never placed twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostView:
    name: str
    capacity: int  # camera slots
    labels: frozenset[str] = frozenset()
    usable: bool = True  # up and not draining


@dataclass
class Placement:
    assignment: dict[str, str] = field(default_factory=dict)  # camera id → host name
    unplaced: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # placed before, on another host now

    def load(self, host: str) -> int:
        return sum(1 for h in self.assignment.values() if h == host)


def place(cameras: Mapping[str, frozenset[str]], hosts: Sequence[HostView],
          current: Mapping[str, str]) -> Placement:
    """`cameras`: camera id → the labels its host must have; `current`: camera id → host it runs on."""
    usable = {h.name: h for h in hosts if h.usable}
    order = {h.name: i for i, h in enumerate(hosts)}
    load = dict.fromkeys(usable, 0)
    out = Placement()
    rest: list[str] = []
    for camera in sorted(cameras):
        host = usable.get(current.get(camera, ""))
        if host is not None and cameras[camera] <= host.labels and load[host.name] < host.capacity:
            out.assignment[camera] = host.name
            load[host.name] += 1
        else:
            rest.append(camera)
    for camera in sorted(rest, key=lambda c: (-len(cameras[c]), c)):
        fits = [h for h in usable.values() if cameras[camera] <= h.labels and load[h.name] < h.capacity]
        if not fits:
            out.unplaced.append(camera)
            continue
        best = max(fits, key=lambda h: (h.capacity - load[h.name], -order[h.name]))
        out.assignment[camera] = best.name
        load[best.name] += 1
        if camera in current and current[camera] != best.name:
            out.moved.append(camera)
    out.unplaced.sort()
    out.moved.sort()
    return out
