"""Collectors that follow the cluster, decided without Ray: the head (launch/recovery.py) feeds in
Ray's node list and acts on the plan.

With ``actors.num_actors: auto`` the head recounts the room every few seconds with the start-up's
own rule (cluster_info.room), and keeps ``room // tasks`` collectors per task (so tasks stay
balanced, as at start-up), never fewer than one: a run whose actor nodes are all gone keeps one
collector per task waiting for placement, so it never starves without a word and an autoscaler
sees demand for an actor node. A node that joins gets new collectors; one that leaves takes its
collectors with it. Only collectors that have not answered yet (not placed) are ever dropped to
shrink: one that works evidently fits, and the room is a conservative count.

A death whose node is gone is the cluster's doing, not the component's: it is not counted toward
giving up (launch/supervision.DeathLog), so one lost node, or several in a row, never ends a run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable


FOLLOW_EVERY_S = 3.0  # between recounts: ray.nodes() is one GCS call, cheap, but not every loop turn
_NODE_DIED = re.compile(r"its node has died\. Node Id: ([0-9a-f]+)")


def lost_node(message: str) -> str | None:
    """The id of the node whose loss killed a component, read from Ray's death message; None
    when the component died by itself (a crash, an OOM kill, a kill -9 of its process)."""
    found = _NODE_DIED.search(message)
    return found.group(1) if found else None


def per_task(room_total: int, num_tasks: int) -> int:
    """Collectors to keep per task: an equal share of the room, at least one (see above)."""
    return max(room_total // num_tasks, 1)


@dataclass
class Slot:
    """One collector index: its task, how many collectors held it, and where the latest stands."""
    task: int
    incarnation: int = 0
    state: str = "waiting"  # "waiting" (not placed, or not answered yet), "working", "gone"


@dataclass
class Roster:
    """The head's view of its collectors by index (Components.collectors holds their handles)."""
    slots: list[Slot] = field(default_factory=list)

    @classmethod
    def of(cls, tasks: Iterable[int]) -> Roster:
        return cls([Slot(task) for task in tasks])

    def answered(self, index: int) -> None:
        if self.slots[index].state == "waiting":
            self.slots[index].state = "working"

    def gone(self, index: int) -> None:
        self.slots[index].state = "gone"

    def restart(self, index: int) -> int:
        """A replacement in the same index; returns its incarnation (fresh env seeds)."""
        slot = self.slots[index]
        slot.incarnation, slot.state = slot.incarnation + 1, "waiting"
        return slot.incarnation

    def add(self, task: int) -> int:
        """A new index for ``task``; returns it."""
        self.slots.append(Slot(task))
        return len(self.slots) - 1

    def count(self, state: str) -> int:
        return sum(slot.state == state for slot in self.slots)

    def live(self, task: int) -> int:
        """Collectors of ``task`` working or waiting to be placed."""
        return sum(slot.task == task and slot.state != "gone" for slot in self.slots)


@dataclass(frozen=True)
class Plan:
    add: tuple[int, ...] = ()  # a task index per collector to start
    drop: tuple[int, ...] = ()  # indices of collectors to stop: not placed yet, the newest first

    def __bool__(self) -> bool:
        return bool(self.add or self.drop)


def plan(roster: Roster, num_tasks: int, room_total: int) -> Plan:
    """What brings each task to its share of the room: new collectors where it is short, and the
    newest waiting ones dropped where it has too many (working ones stay, see above)."""
    target = per_task(room_total, num_tasks)
    add: list[int] = []
    drop: list[int] = []
    for task in range(num_tasks):
        excess = roster.live(task) - target
        if excess < 0:
            add += [task] * -excess
        waiting = [i for i, slot in enumerate(roster.slots) if slot.task == task and slot.state == "waiting"]
        drop += sorted(waiting, reverse=True)[:max(excess, 0)]
    return Plan(tuple(add), tuple(sorted(drop)))
