"""`worker jobs-check`: every job as configured, its schedule in words, its next due times,
and every problem of the jobs file.

Touches no database: it is for CI and for editing the jobs file. A python job's function
is imported (never called) in a child interpreter, as its run would import it.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from datetime import UTC, datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from . import schedules
from .jobfile import PythonCall
from .jobs import declared
from .logs import say_error
from .registry import JobSpec, Loaded, Problem
from .settings import Settings

SHOWN_DUE_TIMES = 3


def run(settings: Settings, loaded: Loaded, *, out: TextIO, require_imports: bool) -> int:
    """Print each job, then each problem (stderr, one line each). Exit 0 all valid, else 2.

    A python job whose top-level package is not importable here is only noted, unless
    `require_imports` (`--import`): the app's code may live where the service runs.
    """
    now = datetime.now(UTC)
    source = settings.jobs_file or "no jobs file: built-in jobs only"
    out.write(f"jobs file: {source}\n\n")
    whole_file = [problem for problem in loaded.problems if problem.job is None]
    jobs = {} if whole_file else loaded.jobs
    for spec in jobs.values():
        out.write(describe(spec, settings, now))
    python = {} if whole_file else _python_targets(loaded)
    problems = [*loaded.problems, *_import_problems(settings, python, out, require_imports)]
    for problem in problems:
        say_error(problem.message)
    if whole_file:
        out.write("the file cannot be read: no job listed (the error is on stderr)\n")
    elif problems:
        errors = f"{len(problems)} error" + ("s" if len(problems) > 1 else "")
        out.write(f"\n{len(jobs)} jobs read, {errors} (on stderr)\n")
    if problems:
        return 2
    out.write(f"\n{len(jobs)} jobs, all valid\n")
    return 0


def describe(spec: JobSpec, settings: Settings, now: datetime) -> str:
    """Name, kind, service, schedule in words, on start; the description; the next due
    times."""
    schedule = spec.schedule(settings)
    zone = ZoneInfo(schedule.timezone if isinstance(schedule, schedules.Cron) else "UTC")
    due = schedules.upcoming(schedule, now, SHOWN_DUE_TIMES)
    times = ", ".join(moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") for moment in due)
    about = f"    {spec.description}\n" if spec.description else ""
    return (
        f"{spec.name}  [{spec.kind}]  service={spec.service}  {schedule.describe()}"
        f"  on_start={spec.starts(settings)}\n{about}    next: {times}\n"
    )


def _python_targets(loaded: Loaded) -> dict[str, str]:
    """The `module:function` of each python job of the jobs file, by job."""
    return {
        job.name: job.action.target for job in loaded.declared if isinstance(job.action, PythonCall)
    }


def _import_problems(
    settings: Settings, targets: dict[str, str], out: TextIO, require: bool
) -> list[Problem]:
    """The python jobs whose function does not import here, as problems; those whose
    top-level package is absent here are noted on `out` instead, unless `require`."""
    if not targets:
        return []
    absent = {name for name, target in targets.items() if not _importable_package(target)}
    if absent and not require:
        out.write(
            f"\nnot imported (their package is not importable from {os.getcwd()}): "
            f"{', '.join(sorted(absent))}; jobs-check --import makes that an error\n"
        )
        targets = {name: target for name, target in targets.items() if name not in absent}
    errors = declared.import_errors(sorted(set(targets.values())))
    return [
        Problem(f"{settings.jobs_file}: jobs.{name}.python: {target}: {error}", name)
        for name, target in targets.items()
        if (error := errors.get(target)) is not None
    ]


def _importable_package(target: str) -> bool:
    """Whether the target's top-level package can be found (nothing is imported), from the
    working directory and sys.path, as the child that imports it will look."""
    top = target.split(":", 1)[0].split(".", 1)[0]
    if top in sys.builtin_module_names:
        return True
    return importlib.machinery.PathFinder.find_spec(top, [os.getcwd(), *sys.path]) is not None
