"""From a stage graph to SLURM jobs: which stages need a job, which become one job array, and who waits for whom.

One job runs one stage (``harness run SUITE --stage ID``). The stages of one entry on one model over several seeds
become one job array (task id = the seed's index in ``seeds``) when every task has the same kind of dependencies:
on jobs shared by all tasks (``afterok``) or on the same task of another array (``aftercorr``: task k waits only
for task k). Otherwise they stay separate jobs, each waiting for exactly its own inputs (``afterok:123_4`` names
one task of an array). Stages already complete are left out; stages whose job from an earlier submission is still
queued or running keep that job, and new jobs wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph, Stage


@dataclass(eq=False)  # compared and hashed by identity: two planned jobs are never "equal"
class Job:
    """One sbatch submission: a single stage, a job array over seeds, or the final report."""

    name: str  # file stem of its script, unique in the run: metrics__perplexity__tiny, attacks__hotflip__tiny__seeds
    kind: str  # train | metrics | attacks | report
    stages: list[Stage]
    #: Array task ids (the seeds' indices), parallel to ``stages``; empty for a single job.
    tasks: list[int] = field(default_factory=list)
    #: What must finish successfully first: (job, task) pairs. ``job`` is a planned :class:`Job` or the id of a
    #: job from an earlier submission; ``task`` None means the whole job (or all of an array).
    after: list[tuple[Job | str, int | None]] = field(default_factory=list)
    #: Arrays whose task k must finish successfully before this array's task k starts.
    after_corresponding: list[Job] = field(default_factory=list)
    job_id: str | None = None  # set once submitted

    @property
    def is_array(self) -> bool:
        return bool(self.tasks)

    def ref(self, stage: Stage) -> str:
        """The id SLURM shows for the part of this (submitted) job that runs ``stage``: ``123`` or ``123_4``."""
        assert self.job_id is not None
        if not self.is_array:
            return self.job_id
        return f"{self.job_id}_{self.tasks[self.stages.index(stage)]}"

    def dependency(self, ids: dict[str, str] | None = None) -> str:
        """The ``--dependency`` value. ``ids`` maps a planned job's name to its id (default: its ``job_id``);
        a dry run passes shell variables instead."""

        def job_id(job: Job) -> str:
            value = (ids or {}).get(job.name, job.job_id)
            assert value is not None, f"{job.name} is not submitted"
            return value

        ok = []
        for job, task in self.after:
            base = job if isinstance(job, str) else job_id(job)
            ok.append(base if task is None else f"{base}_{task}")
        parts = []
        if ok:
            parts.append("afterok:" + ":".join(dict.fromkeys(ok)))
        if self.after_corresponding:
            parts.append("aftercorr:" + ":".join(dict.fromkeys(job_id(j) for j in self.after_corresponding)))
        return ",".join(parts)


def flat(stage_id: str) -> str:
    """A stage id as a file name: ``attacks/hotflip/tiny/s42`` -> ``attacks__hotflip__tiny__s42``."""
    return stage_id.replace("/", "__")


def topological(stages: list[Stage]) -> list[Stage]:
    """The stages with every dependency before its dependents (graph order kept where it already is)."""
    by_id = {s.id: s for s in stages}
    placed: set[str] = set()
    out: list[Stage] = []

    def place(stage: Stage, path: tuple[str, ...]) -> None:
        if stage.id in placed:
            return
        if stage.id in path:
            raise ValueError(f"dependency cycle: {' -> '.join(path + (stage.id,))}")
        for dep in stage.deps:
            place(by_id[dep], path + (stage.id,))
        placed.add(stage.id)
        out.append(stage)

    for stage in stages:
        place(stage, ())
    return out


def plan_jobs(graph: Graph, done: set[str], surviving: dict[str, str], arrays: bool = True) -> list[Job]:
    """The jobs to submit, in an order where every job comes after the jobs it waits for.

    ``done``: ids of complete stages (no job). ``surviving``: stage id -> id of its job from an earlier submission
    that is still queued or running (kept; new jobs wait for it).
    """
    try:
        return _Planner(graph, done, surviving).plan(arrays)
    except _GroupsInterlocked:  # two entries waiting for each other seed by seed: plain jobs always work
        return _Planner(graph, done, surviving).plan(arrays=False)


class _GroupsInterlocked(Exception):
    pass


class _Planner:
    def __init__(self, graph: Graph, done: set[str], surviving: dict[str, str]) -> None:
        self.by_id = graph.by_id()
        self.done, self.surviving = done, surviving
        self.task_of_seed = {seed: i for i, seed in enumerate(graph.suite.seeds)}
        self.todo = [s for s in topological(graph.stages) if s.id not in done and s.id not in surviving]
        self.owner: dict[str, Job] = {}  # stage id -> the planned job that runs it

    def plan(self, arrays: bool) -> list[Job]:
        # Candidate arrays: the seeds of one entry on one model. Groups are planned in the order of their last
        # member, so whatever a group waits for is planned before it (or _GroupsInterlocked says it cannot be).
        groups: dict[tuple[str, ...], list[Stage]] = {}
        for stage in self.todo:
            key = (stage.section, stage.entry, stage.model) if stage.seeded and arrays else (stage.id,)
            groups.setdefault(key, []).append(stage)
        jobs: list[Job] = []
        for members in sorted(groups.values(), key=lambda members: self.todo.index(members[-1])):
            array = self.array(members) if len(members) > 1 else None
            for job in [array] if array else [self.single(s) for s in members]:
                for stage in job.stages:
                    self.owner[stage.id] = job
                jobs.append(job)
        return jobs

    def wait_for(self, dep: str) -> tuple[Job | str, int | None] | None:
        """What a stage needing ``dep`` waits for: nothing (done), a surviving job, or a planned job (and task)."""
        if dep in self.done:
            return None
        if dep in self.surviving:
            return (self.surviving[dep], None)
        if dep not in self.owner:
            raise _GroupsInterlocked(dep)
        job = self.owner[dep]
        return (job, job.tasks[job.stages.index(self.by_id[dep])] if job.is_array else None)

    def single(self, stage: Stage) -> Job:
        waits = [w for dep in stage.deps if (w := self.wait_for(dep)) is not None]
        return Job(flat(stage.id), stage.section, [stage], after=list(dict.fromkeys(waits)))

    def array(self, members: list[Stage]) -> Job | None:
        """One array for ``members`` if every task waits for the same things once "task k of array X" (k being the
        task's own index) reads as ``aftercorr:X``; None when they differ."""

        def waits(stage: Stage) -> tuple[frozenset[tuple[Job | str, int | None]], frozenset[Job]]:
            ok, corresponding = set(), set()
            for dep in stage.deps:
                w = self.wait_for(dep)
                if w is None:
                    continue
                job, task = w
                if isinstance(job, Job) and task is not None and task == self.task_of_seed[stage.seed]:
                    corresponding.add(job)
                else:
                    ok.add(w)
            return frozenset(ok), frozenset(corresponding)

        shapes = {waits(stage) for stage in members}
        if len(shapes) != 1:
            return None
        ok, corresponding = shapes.pop()
        first = members[0]
        return Job(flat(f"{first.section}/{first.entry}/{first.model}") + "__seeds", first.section, members,
                   tasks=[self.task_of_seed[s.seed] for s in members], after=sorted(ok, key=_order),
                   after_corresponding=sorted(corresponding, key=lambda j: j.name))


def _order(wait: tuple[Job | str, int | None]) -> tuple[str, int]:
    job, task = wait
    return (job if isinstance(job, str) else job.name, -1 if task is None else task)


def report_job(jobs: list[Job], surviving: dict[str, str]) -> Job:
    """The final job (report / final results): waits for every stage job, new and surviving."""
    after: list[tuple[Job | str, int | None]] = [(job, None) for job in jobs]
    after += [(ref, None) for ref in dict.fromkeys(surviving.values())]
    return Job("report", "report", [], after=after)
