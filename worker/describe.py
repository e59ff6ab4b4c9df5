"""What a job is, for its page, `GET /api/jobs/JOB` and `worker job show`: its kind, what it
runs and with which parameters, its timeout and retries, its description and where it is
declared, with every secret masked (ARCHITECTURE.md, "Runtime jobs").

A runtime job's definition is its ledger row's. A built-in job's is this package's. A jobs
file job's is read from the jobs file this process was started with (WORKER_JOBS_FILE), once:
the ledger row names the file (`declared_in`), and a row whose file is not this process's
says so rather than show another file's definition.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import jobfile, registry
from .jobfile import Command, Declared, HttpCall, PythonCall, SqlStatement
from .logs import SECRETS
from .masking import mask_named, mask_url
from .settings import Settings
from .status import JobStatus


class FileJobs:
    """The jobs file's declared jobs as this process reads it, parsed on first use."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.jobs_file
        self._lock = threading.Lock()
        self._jobs: dict[str, Declared] | None = None
        self.error: str | None = None

    def get(self, name: str) -> Declared | None:
        with self._lock:
            if self._jobs is None:
                self._jobs = self._read()
            return self._jobs.get(name)

    def _read(self) -> dict[str, Declared]:
        if self.path is None:
            return {}
        try:
            loaded = jobfile.load(self.path, tuple(registry.JOBS))
        except jobfile.JobsFileError as exc:
            self.error = SECRETS(str(exc))
            return {}
        return {job.name: job for job in loaded.declared}


def describe(entry: JobStatus, file_jobs: FileJobs) -> dict[str, Any]:
    """The job's definition as its page shows it: the same shape for every source."""
    shown: dict[str, Any] = {
        "source": entry.source,
        "declared_in": _where(entry),
        "service": entry.service,
        "schedule": entry.schedule,
        "counters": {"runs": entry.runs, "successes": entry.successes, "failures": entry.failures},
    }
    if entry.source == "runtime" and entry.definition:
        return {**shown, **_runtime(entry.definition)}
    if entry.source == "file":
        return {**shown, **_file(entry, file_jobs)}
    return {**shown, **_builtin(entry.job)}


def _where(entry: JobStatus) -> str:
    if entry.source == "runtime":
        return "at run time (the API or `worker job create`)"
    if entry.source == "file":
        return entry.declared_in or "a jobs file"
    return "built in (the worker package)"


def _runtime(definition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": "runtime",
        "handler": definition.get("handler"),
        "kwargs": _masked_json(definition.get("kwargs") or {}),
        "timeout_s": definition.get("timeout"),
        "max_attempts": definition.get("max_attempts"),
        "description": definition.get("description"),
    }


def _builtin(name: str) -> dict[str, Any]:
    spec = registry.JOBS.get(name)
    if spec is None:
        return {"kind": "builtin", "function": None, "description": None}
    run = spec.run
    doc = (run.__doc__ or "").strip().splitlines()
    return {
        "kind": "builtin",
        "function": f"{run.__module__}.{run.__qualname__}",
        "max_attempts": spec.policy.max_attempts,
        "description": doc[0] if doc else None,
    }


def _file(entry: JobStatus, file_jobs: FileJobs) -> dict[str, Any]:
    declared_in = Path(entry.declared_in) if entry.declared_in else None
    job = file_jobs.get(entry.job) if declared_in == file_jobs.path else None
    if job is None:
        why = file_jobs.error or (
            f"this process reads {file_jobs.path or 'no jobs file'}, which does not declare it"
        )
        return {"kind": None, "unknown": why}
    return {
        "kind": job.kind,
        **_action(job.action),
        "timeout_s": job.timeout_s,
        "retries": job.retries,
        "retry_delay_s": job.retry_delay_s,
        "max_attempts": job.policy.max_attempts,
        "description": job.description,
    }


def _action(action: jobfile.Action) -> dict[str, Any]:
    """What a declared job runs; header and env values with a secret-like name are masked
    whole, every other text through the known secrets."""
    if isinstance(action, HttpCall):
        return {
            "method": action.method,
            "url": mask_url(SECRETS(action.url)),
            "headers": mask_named(action.headers, SECRETS),
            "json": _masked_json(action.json),
            "token_env": action.token_env,  # a variable's name: its value is never shown
        }
    if isinstance(action, Command):
        return {
            "command": [SECRETS(arg) for arg in action.argv],
            "cwd": action.cwd,
            "env": mask_named(action.env, SECRETS),
        }
    if isinstance(action, PythonCall):
        return {"target": action.target, "kwargs": _masked_json(dict(action.kwargs))}
    assert isinstance(action, SqlStatement)
    return {"sql": SECRETS(action.sql)}


def _masked_json(value: Any) -> Any:
    if value is None or not SECRETS:
        return value
    return json.loads(SECRETS(json.dumps(value)))
