"""The stage graph as plain data: which stages exist, which chunks must run, which are
ready, and which are blocked by a failed input.

Plain Python: nothing here imports Prefect, Dask or a filesystem. The flow only asks a
:class:`ReadyTracker` what is ready and submits it; results flow back into the tracker,
which releases the chunks whose inputs are now all committed (no barrier between
stages) and blocks those downstream of a failure.

What runs (:func:`decide`):

* A chunk runs when its target is missing (or with ``force``).
* Except a chunk of a root stage that other selected stages read (raw data): it runs
  only when it is missing (or ``force``) and a downstream chunk that runs needs it. A
  committed downstream chunk never makes its upstream run: raw outputs may have been
  deleted to save space, and re-extracting them is what pruning avoids. A missing
  chunk of a derived stage is rebuilt from its committed inputs (pulling in the raw
  chunks it needs, if they are missing too).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from distetl.errors import ConfigError, PlanError

__all__ = ["StageGraph", "StagePlan", "ReadyTracker", "check_distinct_paths", "decide"]


class StageGraph:
    """Stages by name, in an order where every upstream comes before its dependants.

    Args:
        stages: The pipeline's stages.

    Raises:
        ConfigError: Two stages with one name, an unknown upstream, or a cycle.
    """

    def __init__(self, stages: Sequence[Any]):
        self.by_name: dict[str, Any] = {}
        for stage in stages:
            if stage.name in self.by_name:
                raise ConfigError(
                    "stage names unique within a pipeline", f"two stages named {stage.name!r}",
                    "rename one of them", where=f"stage {stage.name}",
                )
            self.by_name[stage.name] = stage
        for stage in stages:
            for item in stage.all_inputs:
                if item.upstream not in self.by_name:
                    raise ConfigError(
                        f"an upstream stage of this pipeline ({', '.join(self.by_name)})",
                        repr(item.upstream),
                        "name an existing stage in upstream=... or the input (or add that stage)",
                        where=f"stage {stage.name}, input {item.name}",
                    )
        self.dependants: dict[str, list[str]] = defaultdict(list)
        for stage in stages:
            for up in self.upstreams_of(stage):
                self.dependants[up].append(stage.name)
        self.order: list[Any] = self._sorted(stages)

    @staticmethod
    def upstreams_of(stage: Any) -> list[str]:
        """The other stages a stage reads (its own past is no dependency on another stage)."""
        return [up for up in stage.upstreams if up != stage.name]

    def _sorted(self, stages: Sequence[Any]) -> list[Any]:
        """Upstream first, in declaration order where free; a cycle is a plan-time error."""
        order: list[Any] = []
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name):] + [name]
                raise ConfigError(
                    "stages without a cycle (each stage reads earlier ones)",
                    "the cycle " + " -> ".join(cycle) + " (each reads the next)",
                    "make one of these stages a root stage with its own plan, or drop one input",
                    where=f"stage {name}",
                )
            state[name] = 1
            for up in self.upstreams_of(self.by_name[name]):
                visit(up, path + [name])
            state[name] = 2
            order.append(self.by_name[name])

        for stage in stages:
            visit(stage.name, [])
        return order

    @property
    def names(self) -> list[str]:
        """Stage names, upstream first."""
        return [s.name for s in self.order]

    def select(self, names: Iterable[str]) -> list[str]:
        """The named stages and every stage they need, upstream first.

        Raises:
            ConfigError: For an unknown stage name.
        """
        wanted: set[str] = set()
        for name in names:
            if name not in self.by_name:
                raise ConfigError(
                    f"a stage of this pipeline ({', '.join(self.names)})", repr(name),
                    "pass --stage with one of those names",
                )
            stack = [name]
            while stack:
                name = stack.pop()
                if name not in wanted:
                    wanted.add(name)
                    stack.extend(self.upstreams_of(self.by_name[name]))
        return [n for n in self.names if n in wanted]


@dataclass
class StagePlan:
    """One stage rendered for a run.

    Attributes:
        stage: The stage.
        chunks: Its chunks, in order.
        paths: Each chunk's target path.
        committed: Indexes of the chunks whose target exists.
        inputs: For a downstream stage, each chunk's upstream chunk indexes per input: a
            dict input name → one list per chunk (a plain list: the only input's).
        targets: The stage's :class:`~distetl.model.targets.Targets` (storage, output root).
        sources: Each declared source's fingerprint and files, listed at plan time.
    """

    stage: Any
    chunks: list[Any]
    paths: list[str]
    committed: set[int] = field(default_factory=set)
    inputs: Optional[Any] = None
    targets: Any = None
    #: Declared source name → (fingerprint, files), listed at plan time.
    sources: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def links(self) -> list[tuple[Any, list[list[int]]]]:
        """Each input of the stage (:class:`~distetl.model.inputs.Input`) with every chunk's
        upstream indexes through it."""
        if self.inputs is None:
            return []
        if isinstance(self.inputs, dict):
            return [(item, self.inputs[item.name]) for item in self.stage.all_inputs if item.name in self.inputs]
        return [(self.stage.all_inputs[0], self.inputs)]

    def reads(self, i: int) -> list[tuple[str, int]]:
        """Every (upstream stage, upstream index) chunk ``i`` reads, over all inputs."""
        out: list[tuple[str, int]] = []
        for item, indexes in self.links:
            out.extend((item.upstream, u) for u in indexes[i])
        return out

    def index_of(self, key: str) -> int:
        """A chunk's index from its key."""
        lookup = getattr(self, "_lookup", None)
        if lookup is None:
            lookup = {c.key: i for i, c in enumerate(self.chunks)}
            self._lookup = lookup
        return lookup[key]


def decide(plans: Sequence[StagePlan], force: bool = False,
           extra: Optional[dict[str, set[int]]] = None) -> dict[str, list[int]]:
    """Which chunks of each stage must run, upstream first.

    ``plans`` are the selected stages, upstream before downstream. A derived stage, or
    a root stage none of the selected stages reads, runs its missing chunks (all with
    ``force``); a root stage that selected stages read runs only its chunks that are
    missing (or ``force``) and needed by a chunk of a dependant that runs.

    ``extra`` (stale chunks, with ``--stale``) run too, whatever their stage, and so
    does every selected chunk that reads one of them, transitively: a redone day makes
    its month and the year run.

    Returns:
        Stage name → sorted chunk indexes to run.
    """
    if extra:
        extra = _downstream_closure(plans, extra)
    by_name = {p.name: p for p in plans}
    readers: dict[str, list[tuple[StagePlan, list[list[int]]]]] = defaultdict(list)
    for p in plans:
        for item, indexes in p.links:
            if item.upstream in by_name and item.upstream != p.name:
                readers[item.upstream].append((p, indexes))
    need: dict[str, list[int]] = {}
    for p in reversed(plans):
        if not readers[p.name] or not p.stage.is_root:
            wanted: Iterable[int] = range(len(p.chunks))
        else:
            needed: set[int] = set()
            for reader, indexes in readers[p.name]:
                for j in need[reader.name]:
                    needed.update(indexes[j])
            wanted = sorted(needed)
        need[p.name] = list(wanted) if force else [i for i in wanted if i not in p.committed]
        if extra and extra.get(p.name):
            need[p.name] = sorted(set(need[p.name]) | extra[p.name])
    return {p.name: need[p.name] for p in plans}


def _downstream_closure(plans: Sequence[StagePlan], seeds: dict[str, set[int]]) -> dict[str, set[int]]:
    """``seeds`` plus every selected chunk that reads one of them, transitively."""
    out = {name: set(v) for name, v in seeds.items()}
    for p in plans:  # upstream first: one pass covers other stages
        mine = out.setdefault(p.name, set())
        own = []
        for item, indexes in p.links:
            if item.upstream == p.name:
                own.append(indexes)  # its own past: below, once the rest is known
                continue
            hit = out.get(item.upstream)
            if hit:
                mine.update(j for j, reads in enumerate(indexes) if any(u in hit for u in reads))
        if own and mine:
            _close_over_self(mine, own)
    return out


def _close_over_self(mine: set[int], own: list[list[list[int]]]) -> None:
    """Add every chunk that reads (through the stage's own past) a chunk in ``mine``,
    transitively: a redone day makes every later day of its chain run."""
    readers: dict[int, list[int]] = defaultdict(list)
    for indexes in own:
        for j, reads in enumerate(indexes):
            for u in reads:
                readers[u].append(j)
    stack = list(mine)
    while stack:
        for j in readers.get(stack.pop(), ()):
            if j not in mine:
                mine.add(j)
                stack.append(j)


class ReadyTracker:
    """Hands out the chunks whose inputs are committed, as results arrive.

    Args:
        plans: The selected stages' plans, upstream first.
        need: What runs, from :func:`decide`.
    """

    def __init__(self, plans: Sequence[StagePlan], need: dict[str, list[int]]):
        self.plans = {p.name: p for p in plans}
        self.order = [p.name for p in plans]
        self.need = need
        #: (stage, index) → unfinished inputs, for chunks still waiting.
        self.waiting: dict[tuple[str, int], int] = {}
        #: (upstream stage, index) → the waiting chunks that read it.
        self.readers: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
        #: Chunks ready now, per stage, in plan order.
        self.ready: dict[str, deque[int]] = {name: deque() for name in self.order}
        #: (stage, index) → the failed input (``stage:key``) that blocks it.
        self.blocked: dict[tuple[str, int], str] = {}
        self.outstanding = sum(len(v) for v in need.values())
        running = {n: set(v) for n, v in need.items() if n in self.plans}
        for name in self.order:
            plan = self.plans[name]
            links = [(item.upstream, indexes) for item, indexes in plan.links if running.get(item.upstream)]
            for i in need[name]:
                pending: set[tuple[str, int]] = set()
                for up, indexes in links:
                    running_up = running[up]
                    for u in indexes[i]:
                        if u in running_up and (up, u) != (name, i):
                            pending.add((up, u))
                for key in pending:
                    self.readers[key].append((name, i))
                if pending:
                    self.waiting[(name, i)] = len(pending)
                else:
                    self.ready[name].append(i)

    def take(self, name: str, limit: int) -> list[int]:
        """Up to ``limit`` ready chunks of stage ``name`` (removed from the ready list)."""
        ready = self.ready[name]
        return [ready.popleft() for _ in range(min(limit, len(ready)))]

    def chain_segment(self, name: str, head: int, limit: int) -> list[int]:
        """``head`` and the links after it in its chain that wait on nothing else, in
        chain order, up to ``limit`` chunks: a segment one batch runs in order.

        A link waiting only on its predecessor in the segment is taken out of the waiting
        list (it is in flight); the batch reports it blocked itself if its predecessor
        fails. Links that also wait on another stage's chunk stay waiting.
        """
        out = [head]
        while len(out) < limit:
            last = (name, out[-1])
            successor = next((r for r in self.readers.get(last, ()) if r[0] == name and self.waiting.get(r) == 1),
                             None)
            if successor is None:
                break
            del self.waiting[successor]
            out.append(successor[1])
        return out

    def ready_count(self, name: str) -> int:
        return len(self.ready[name])

    def done(self, name: str, index: int, ok: bool, block: bool = True) -> list[tuple[str, int]]:
        """Record a chunk's outcome. Committed: release the readers whose inputs are now
        all committed. Failed: block every chunk downstream of it. Not committed with
        ``block=False`` (not run because the run stopped): its readers stay waiting.

        Returns:
            The chunks blocked by this outcome (empty when it committed).
        """
        self.outstanding -= 1
        readers = self.readers.pop((name, index), [])
        if not ok and not block:
            return []
        if ok:
            for reader in readers:
                if reader not in self.waiting:
                    continue  # already blocked by another input
                self.waiting[reader] -= 1
                if not self.waiting[reader]:
                    del self.waiting[reader]
                    self.ready[reader[0]].append(reader[1])
            return []
        cause = f"{name}:{self.plans[name].chunks[index].key}"
        blocked: list[tuple[str, int]] = []
        stack = list(readers)
        while stack:
            reader = stack.pop()
            if reader in self.blocked or reader not in self.waiting:
                continue
            del self.waiting[reader]
            self.blocked[reader] = cause
            self.outstanding -= 1
            blocked.append(reader)
            stack.extend(self.readers.pop(reader, []))
        return blocked

    @property
    def finished(self) -> bool:
        """Whether every chunk that runs has an outcome (committed, failed or blocked)."""
        return self.outstanding <= 0


def check_distinct_paths(plans: Sequence[StagePlan]) -> None:
    """Fail at plan time when two stages render the same path.

    Only stages whose listing roots nest (one's root is inside the other's) can
    collide, so only those are compared.

    Raises:
        PlanError: Naming both stages, a chunk of each and the path.
    """
    roots = [(p, p.targets.listing_root().rstrip("/") + "/") for p in plans]
    for a in range(len(roots)):
        for b in range(a + 1, len(roots)):
            (pa_, ra), (pb, rb) = roots[a], roots[b]
            if not (ra.startswith(rb) or rb.startswith(ra)):
                continue
            owner = {path: chunk.key for chunk, path in zip(pa_.chunks, pa_.paths)}
            for chunk, path in zip(pb.chunks, pb.paths):
                if path in owner:
                    raise PlanError(
                        "one target path per chunk across stages",
                        f"stage {pa_.name!r} chunk {owner[path]!r} and stage {pb.name!r} chunk {chunk.key!r} "
                        f"both rendering {path!r}",
                        "give each stage its own folder in its target template (e.g. {output}/STAGE/...)",
                        where=f"stage {pb.name}",
                    )
