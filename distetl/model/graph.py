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
            if stage.upstream is not None and stage.upstream not in self.by_name:
                raise ConfigError(
                    f"an upstream stage of this pipeline ({', '.join(self.by_name)})",
                    repr(stage.upstream), "name an existing stage in upstream=... (or add that stage)",
                    where=f"stage {stage.name}",
                )
        self.dependants: dict[str, list[str]] = defaultdict(list)
        for stage in stages:
            if stage.upstream is not None:
                self.dependants[stage.upstream].append(stage.name)
        self.order: list[Any] = self._sorted(stages)

    def _sorted(self, stages: Sequence[Any]) -> list[Any]:
        order: list[Any] = []
        state: dict[str, int] = {}
        for stage in stages:
            path: list[str] = []
            name: Optional[str] = stage.name
            while name is not None and state.get(name) != 2:
                if state.get(name) == 1:
                    cycle = path[path.index(name):] + [name]
                    raise ConfigError(
                        "stages without a cycle (each stage reads an earlier one)",
                        "the cycle " + " -> ".join(reversed(cycle)),
                        "make one of these stages a root stage with its own plan",
                        where=f"stage {name}",
                    )
                state[name] = 1
                path.append(name)
                name = self.by_name[name].upstream
            for done in reversed(path):
                state[done] = 2
                order.append(self.by_name[done])
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
            while name is not None and name not in wanted:
                wanted.add(name)
                name = self.by_name[name].upstream
        return [n for n in self.names if n in wanted]


@dataclass
class StagePlan:
    """One stage rendered for a run.

    Attributes:
        stage: The stage.
        chunks: Its chunks, in order.
        paths: Each chunk's target path.
        committed: Indexes of the chunks whose target exists.
        inputs: For a downstream stage, each chunk's upstream chunk indexes.
        targets: The stage's :class:`~distetl.model.targets.Targets` (storage, output root).
    """

    stage: Any
    chunks: list[Any]
    paths: list[str]
    committed: set[int] = field(default_factory=set)
    inputs: Optional[list[list[int]]] = None
    targets: Any = None

    @property
    def name(self) -> str:
        return self.stage.name

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
    readers: dict[str, list[StagePlan]] = defaultdict(list)
    for p in plans:
        if p.stage.upstream is not None and p.stage.upstream in by_name:
            readers[p.stage.upstream].append(p)
    need: dict[str, list[int]] = {}
    for p in reversed(plans):
        if not readers[p.name] or not p.stage.is_root:
            wanted: Iterable[int] = range(len(p.chunks))
        else:
            needed: set[int] = set()
            for reader in readers[p.name]:
                assert reader.inputs is not None
                for j in need[reader.name]:
                    needed.update(reader.inputs[j])
            wanted = sorted(needed)
        need[p.name] = list(wanted) if force else [i for i in wanted if i not in p.committed]
        if extra and extra.get(p.name):
            need[p.name] = sorted(set(need[p.name]) | extra[p.name])
    return {p.name: need[p.name] for p in plans}


def _downstream_closure(plans: Sequence[StagePlan], seeds: dict[str, set[int]]) -> dict[str, set[int]]:
    """``seeds`` plus every selected chunk that reads one of them, transitively."""
    out = {name: set(v) for name, v in seeds.items()}
    for p in plans:
        up = p.stage.upstream
        if up is None or not out.get(up) or p.inputs is None:
            continue
        hit = out[up]
        mine = out.setdefault(p.name, set())
        mine.update(j for j, inputs in enumerate(p.inputs) if any(u in hit for u in inputs))
    return out


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
        for name in self.order:
            plan = self.plans[name]
            up = plan.stage.upstream
            running_up = set(need.get(up, ())) if up in self.plans else set()
            for i in need[name]:
                pending = 0
                if running_up:
                    assert plan.inputs is not None
                    for u in plan.inputs[i]:
                        if u in running_up:
                            pending += 1
                            self.readers[(up, u)].append((name, i))
                if pending:
                    self.waiting[(name, i)] = pending
                else:
                    self.ready[name].append(i)

    def take(self, name: str, limit: int) -> list[int]:
        """Up to ``limit`` ready chunks of stage ``name`` (removed from the ready list)."""
        ready = self.ready[name]
        return [ready.popleft() for _ in range(min(limit, len(ready)))]

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
