"""Turn a task DAG into a series-parallel schedule: the shape nested Parallel states can express.

A schedule is a tree of ``Step`` (one task), ``Series`` (children one after another) and
``Parallel`` (children at the same time, the next thing starts when all have finished). A DAG whose
order *is* series-parallel (its transitive reduction has no "N") is decomposed exactly, keeping all
its parallelism. Any other DAG contains a part that no such tree expresses; there the schedule cuts
the part in two (``P`` before ``Q``, ``P`` closed under dependencies) at the topological level that
adds the fewest false dependencies, and decomposes each side again. A cut never lets a task start
before its dependencies; it only makes some tasks wait for tasks they do not depend on.

Sets of tasks are Python ints used as bit sets over a global topological numbering, so ancestor
tests on 5,000-task DAGs stay fast.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from itertools import pairwise

from udop.errors import InputError

__all__ = ["Node", "Parallel", "Series", "Step", "critical_path", "iter_steps", "makespan", "schedule"]


class ScheduleError(InputError):
    """The dependencies do not form a DAG (unknown task or a cycle)."""


@dataclass(frozen=True, slots=True)
class Step:
    task_id: str


@dataclass(frozen=True, slots=True)
class Series:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Parallel:
    branches: tuple[Node, ...]


Node = Step | Series | Parallel


def iter_steps(node: Node) -> Iterator[str]:
    """Task ids of a schedule, in schedule order (depth first)."""
    stack: list[Node] = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, Step):
            yield cur.task_id
        elif isinstance(cur, Series):
            stack.extend(reversed(cur.items))
        else:
            stack.extend(reversed(cur.branches))


def makespan(node: Node, durations: Mapping[str, float] | None = None) -> float:
    """Finishing time of a schedule when every Parallel waits for its slowest branch.

    ``durations`` maps task ids to run times; missing ones (or all, when None) count as 1.
    """
    if isinstance(node, Step):
        return 1.0 if durations is None else float(durations.get(node.task_id, 1.0))
    if isinstance(node, Series):
        return sum(makespan(item, durations) for item in node.items)
    return max(makespan(branch, durations) for branch in node.branches)


def critical_path(deps: Mapping[str, Sequence[str]], durations: Mapping[str, float] | None = None) -> float:
    """Length of the longest dependency chain: the best makespan any executor can reach."""
    order = _topological(deps)
    finish: dict[str, float] = {}
    for tid in order:
        own = 1.0 if durations is None else float(durations.get(tid, 1.0))
        finish[tid] = own + max((finish[d] for d in deps[tid]), default=0.0)
    return max(finish.values(), default=0.0)


def _topological(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's algorithm, stable in definition order; names the unknown task or a cycle."""
    position = {tid: i for i, tid in enumerate(deps)}
    children: dict[str, list[str]] = {tid: [] for tid in deps}
    waiting: dict[str, int] = {}
    for tid, parents in deps.items():
        seen = set()
        for p in parents:
            if p not in position:
                raise ScheduleError(f"task {tid!r} depends on unknown task {p!r}")
            if p in seen:
                continue
            seen.add(p)
            children[p].append(tid)
        waiting[tid] = len(seen)
    ready = [position[t] for t, n in waiting.items() if n == 0]
    heapify(ready)
    names = list(deps)
    order: list[str] = []
    while ready:
        tid = names[heappop(ready)]
        order.append(tid)
        for c in children[tid]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heappush(ready, position[c])
    if len(order) != len(deps):
        raise ScheduleError(f"dependency cycle: {' -> '.join(_find_cycle(deps, set(order)))}")
    return order


def _find_cycle(deps: Mapping[str, Sequence[str]], done: set[str]) -> list[str]:
    start = next(t for t in deps if t not in done)
    path: list[str] = []
    index: dict[str, int] = {}
    cur = start
    while cur not in index:
        index[cur] = len(path)
        path.append(cur)
        cur = next(p for p in deps[cur] if p not in done)
    return [*path[index[cur]:], cur][::-1]


#: random draws of task times the forced-cut choice averages over
CUT_SAMPLES = 4

#: Parallel states nested deeper than this are not generated: below it, a part is scheduled as
#: plain topological levels (a Series of Parallels), which bounds the definition's nesting.
MAX_DEPTH = 24


def schedule(deps: Mapping[str, Sequence[str]], *, max_depth: int = MAX_DEPTH) -> Node:
    """A series-parallel schedule of the DAG ``deps`` (task id -> ids it depends on).

    ``max_depth`` caps how deeply Parallels nest (see ``MAX_DEPTH``). Raises ``ScheduleError`` for
    an unknown dependency or a cycle.
    """
    if not deps:
        raise ScheduleError("a pipeline needs at least one task")
    return _Decomposer(deps, max(1, max_depth)).run()


class _Decomposer:
    def __init__(self, deps: Mapping[str, Sequence[str]], max_depth: int) -> None:
        self.max_depth = max_depth
        # fixed draws of task times (exponential, mean 1) for choosing forced cuts: the same DAG
        # always compiles to the same definition
        rng = random.Random(20261126)
        self.samples = [[rng.expovariate(1.0) for _ in deps] for _ in range(CUT_SAMPLES)]
        self.names = _topological(deps)
        index = {t: i for i, t in enumerate(self.names)}
        n = len(self.names)
        self.parents: list[list[int]] = [sorted({index[p] for p in deps[t]}) for t in self.names]
        self.children: list[list[int]] = [[] for _ in range(n)]
        for v, ps in enumerate(self.parents):
            for p in ps:
                self.children[p].append(v)
        self.anc = [0] * n
        for v in range(n):
            acc = 0
            for p in self.parents[v]:
                acc |= self.anc[p] | (1 << p)
            self.anc[v] = acc
        self.desc = [0] * n
        for v in range(n - 1, -1, -1):
            acc = 0
            for c in self.children[v]:
                acc |= self.desc[c] | (1 << c)
            self.desc[v] = acc

    def run(self) -> Node:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20 * len(self.names) + 1000))
        try:
            return self._decompose(list(range(len(self.names))))
        finally:
            sys.setrecursionlimit(limit)

    # Every set handed to _decompose is convex (a < c < b with a, b in it puts c in it), so its
    # comparability components are the weak components of the edges inside it.
    def _decompose(self, members: list[int], depth: int = 0) -> Node:
        if len(members) == 1:
            return Step(self.names[members[0]])
        mask = _mask(members)
        if depth >= self.max_depth:
            return self._layers(members, mask)
        parts = self._components(members, mask)
        if len(parts) > 1:
            return Parallel(tuple(self._decompose(p, depth + 1) for p in parts))
        blocks = self._series_blocks(members, mask)
        if len(blocks) == 1:
            blocks = self._forced_cut(members, mask)
        items: list[Node] = []
        for block in blocks:
            sub = self._decompose(block, depth)
            items.extend(sub.items if isinstance(sub, Series) else (sub,))
        return Series(tuple(items))

    def _components(self, members: list[int], mask: int) -> list[list[int]]:
        seen = 0
        parts: list[list[int]] = []
        for start in members:
            if seen >> start & 1:
                continue
            seen |= 1 << start
            stack = [start]
            part = []
            while stack:
                v = stack.pop()
                part.append(v)
                for w in (*self.parents[v], *self.children[v]):
                    if mask >> w & 1 and not seen >> w & 1:
                        seen |= 1 << w
                        stack.append(w)
            parts.append(sorted(part))
        return parts

    def _series_blocks(self, members: list[int], mask: int) -> list[list[int]]:
        """The finest split into blocks B1 < B2 < ... (every task of Bi before every task of Bj)."""
        pos = {v: i for i, v in enumerate(members)}
        # first[i]: position of the first member that is not an ancestor of members[i]; a prefix
        # of length k is a complete cut iff every later member has all k before it as ancestors.
        first = []
        for v in members:
            missing = mask & ~self.anc[v]
            first.append(pos[(missing & -missing).bit_length() - 1])
        cuts = []
        low = len(members)
        for i in range(len(members) - 1, 0, -1):
            low = min(low, first[i])
            if low >= i:
                cuts.append(i)
        cuts.reverse()
        bounds = [0, *cuts, len(members)]
        return [members[a:b] for a, b in pairwise(bounds) if b > a]

    def _forced_cut(self, members: list[int], mask: int) -> list[list[int]]:
        """Split a part that is not series-parallel into ``P`` then ``Q`` (``P`` closed under
        dependencies): all tasks up to a topological level, earliest-start or latest-start levels.

        Of those cuts, the one with the shortest expected ``critical path(P) + critical path(Q)``
        over a few fixed draws of random task times (what the split costs when tasks take uneven
        time; with equal times every level cut costs nothing), then the fewest false dependencies.
        Both sides' critical paths for every level come from one forward and one backward pass: a
        task's longest chain within ``P`` only involves its ancestors, which are all in ``P``.
        """
        best: tuple[float, int, int] | None = None
        chosen: tuple[dict[int, int], int] | None = None
        inner_parents = {v: [p for p in self.parents[v] if mask >> p & 1] for v in members}
        inner_children = {v: [c for c in self.children[v] if mask >> c & 1] for v in members}
        for levels in (self._levels(members, mask), self._levels_from_end(members, mask)):
            top = max(levels.values())
            by_level: dict[int, list[int]] = {}
            for v in members:
                by_level.setdefault(levels[v], []).append(v)
            expected = [0.0] * top  # cut after level t, for t < top
            for times in self.samples:
                down: dict[int, float] = {}
                for v in members:
                    ps = inner_parents[v]
                    down[v] = times[v] + (max([down[p] for p in ps]) if ps else 0.0)
                up: dict[int, float] = {}
                for v in reversed(members):
                    cs = inner_children[v]
                    up[v] = times[v] + (max([up[c] for c in cs]) if cs else 0.0)
                # p_best[t]: critical path of levels <= t; q_best[t]: of levels >= t
                p_best, q_best = [0.0] * (top + 1), [0.0] * (top + 1)
                running = 0.0
                for t in range(top + 1):
                    running = max(running, *[down[v] for v in by_level[t]])
                    p_best[t] = running
                running = 0.0
                for t in range(top, -1, -1):
                    running = max(running, *[up[v] for v in by_level[t]])
                    q_best[t] = running
                for t in range(top):
                    expected[t] += p_best[t] + q_best[t + 1]
            p_mask, q_mask = 0, mask
            p_count, q_count = 0, len(members)
            comparable = 0  # pairs p < q across the cut
            for t in range(top):
                layer = by_level.get(t, [])
                # moving `layer` from Q to P: pairs (P, layer) stop counting, (layer, rest of Q) start
                for v in layer:
                    comparable -= (self.anc[v] & p_mask).bit_count()
                layer_mask = _mask(layer)
                q_mask &= ~layer_mask
                for v in layer:
                    comparable += (self.desc[v] & q_mask).bit_count()
                p_mask |= layer_mask
                p_count += len(layer)
                q_count -= len(layer)
                key = (round(expected[t], 9), p_count * q_count - comparable, abs(p_count - q_count))
                if p_count and q_count and (best is None or key < best):
                    best, chosen = key, (levels, t)
        assert chosen is not None, "a connected part of two or more tasks has at least two levels"
        levels, t = chosen
        return [[v for v in members if levels[v] <= t], [v for v in members if levels[v] > t]]

    def _layers(self, members: list[int], mask: int) -> Node:
        """Topological levels one after another: the flat schedule used beyond the nesting cap."""
        levels = self._levels(members, mask)
        by_level: dict[int, list[int]] = {}
        for v in members:
            by_level.setdefault(levels[v], []).append(v)
        items: list[Node] = []
        for t in sorted(by_level):
            layer = [Step(self.names[v]) for v in by_level[t]]
            items.append(layer[0] if len(layer) == 1 else Parallel(tuple(layer)))
        return items[0] if len(items) == 1 else Series(tuple(items))

    def _levels(self, members: list[int], mask: int) -> dict[int, int]:
        level: dict[int, int] = {}
        for v in members:  # members are in topological order
            level[v] = 1 + max((level[p] for p in self.parents[v] if mask >> p & 1), default=-1)
        return level

    def _levels_from_end(self, members: list[int], mask: int) -> dict[int, int]:
        height: dict[int, int] = {}
        for v in reversed(members):
            height[v] = 1 + max((height[c] for c in self.children[v] if mask >> c & 1), default=-1)
        top = max(height.values())
        return {v: top - h for v, h in height.items()}


def _mask(members: Iterable[int]) -> int:
    m = 0
    for v in members:
        m |= 1 << v
    return m
