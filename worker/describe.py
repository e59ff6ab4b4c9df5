"""What a job is, for its page, `GET /api/jobs/JOB` and `worker job show`: its kind, what it
runs and with which parameters, its timeout and retries, its description and where it is
declared, with every secret masked (ARCHITECTURE.md, "Runtime jobs").

A runtime job's definition is its ledger row's. A built-in job's is this package's. A jobs
file job's is read from the file its ledger row names (`declared_in`), as this process can
read it now (`jobfile.declared_jobs`, read again when the file changes); a file it cannot
read, or that no longer declares the job, is said rather than guessed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import jobfile, registry
from .jobfile import Command, HttpCall, PythonCall, SqlStatement
from .logs import SECRETS
from .masking import mask_named, mask_url
from .status import JobStatus


def describe(entry: JobStatus) -> dict[str, Any]:
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
        return {**shown, **_file(entry)}
    return {**shown, **_builtin(entry)}


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


def _builtin(entry: JobStatus) -> dict[str, Any]:
    spec = registry.JOBS.get(entry.job)
    if spec is None:
        return {"kind": "builtin", "function": None, "description": None}
    return {
        "kind": "builtin",
        "function": f"{spec.run.__module__}.{spec.run.__qualname__}",
        "max_attempts": spec.policy.max_attempts,
        "description": entry.description,
    }


def _file(entry: JobStatus) -> dict[str, Any]:
    """A jobs-file job's entry, from the file its row names as this process reads it now."""
    if entry.declared_in is None:
        return {"kind": None, "unknown": "its row names no jobs file"}
    try:
        job = jobfile.declared_jobs(Path(entry.declared_in), tuple(registry.JOBS)).get(entry.job)
    except jobfile.JobsFileError as exc:
        return {"kind": None, "unknown": SECRETS(f"{entry.declared_in} {exc}")}
    if job is None:
        return {"kind": None, "unknown": f"{entry.declared_in} does not declare it any more"}
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
