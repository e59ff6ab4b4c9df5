"""The app's own jobs from the jobs file: one HTTP call, command, Python function or SQL statement.

Every declared run is one item: `success` or `failed`. What the job printed goes to the
run's `output` (the last OUTPUT_MAX_BYTES, secrets masked), what it returned to `result`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import db, handlers, http_client
from ..inflight import map_unordered
from ..jobfile import Command, Declared, HttpCall, PythonCall, SqlStatement
from ..logs import SECRETS
from ..supervisor import Child
from .base import JobContext
from .live import PROGRESS_ENV, LiveRun, Progress, read_progress

OUTPUT_MAX_BYTES = 64 * 1024
HTTP_BODY_KEPT = 2048  # of an HTTP answer's body, in `output`
POLL_S = 0.05  # how often a running statement's watcher checks the stop flag
# A stopping daemon kills its children a little before its own grace period ends, so none
# outlives the forced exit.
STOP_KILL_MARGIN_S = 0.5


@dataclass
class Attempt:
    """One try of a declared job."""

    ok: bool
    output: str = ""
    error: str | None = None
    result: Any = None
    retryable: bool = True
    retry_after_s: float | None = None  # a server's Retry-After, when it gave one
    fields: Mapping[str, Any] | None = None  # exit_code, status_code or rowcount
    dropped: int = 0  # output bytes not kept


class _AttemptFailed(http_client.CallFailed):
    """A failed attempt, raised through the retry policy: a retryable one is tried again.

    Its `reason` is the attempt's error, masked wherever it is written.
    """

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(
            attempt.error or "", transient=attempt.retryable, retry_after_s=attempt.retry_after_s
        )
        self.attempt = attempt


def run(ctx: JobContext, job: Declared, token: str | None = None) -> None:
    """One declared run: up to 1 + `retries` attempts, `retry_delay` apart (a server's
    Retry-After, up to the policy's cap, instead when it gives one).

    A dry run does not do the job (what it would do cannot be previewed without doing it):
    it fails only for what `preflight` finds.
    """
    if ctx.dry_run:
        problem = preflight(job, token)
        if problem is not None:
            _record(ctx, job, Attempt(False, error=problem, retryable=False))
            return
        ctx.log.info("declared_job_would_run", job=job.name, kind=job.kind)
        ctx.result.ok()
        return
    _record(ctx, job, _attempts(ctx, job, token))


def preflight(job: Declared, token: str | None) -> str | None:
    """What a dry run can check without doing the job: its token variable is set, a python
    job's function imports (in a child, never called). Why it cannot run, or None."""
    action = job.action
    if isinstance(action, PythonCall) and not action.handler:
        return import_errors([action.target]).get(action.target)
    return _missing_token(job, token)


def import_errors(targets: Sequence[str], cwd: Path | None = None) -> dict[str, str | None]:
    """Each `module:function` imported, never called, by a child interpreter in `cwd` (the
    working directory by default, on its `sys.path` as when the job runs): None when it
    imports and is a function a keyword call reaches, else why not."""
    catalogue = handlers.load_catalogue(list(targets), Path.cwd() if cwd is None else cwd)
    found = {target: catalogue.get(target) for target in targets}
    return {
        target: "not inspected" if handler is None else handler.error
        for target, handler in found.items()
    }


def _attempts(ctx: JobContext, job: Declared, token: str | None) -> Attempt:
    """Attempts through the shared retry policy until one succeeds, cannot be retried, a stop
    is asked or the retries run out; the last one."""
    policy = http_client.RetryPolicy.fixed(
        1 + job.retries, job.retry_delay_s, ctx.sleep, retry_after=True
    )

    def attempt(_: float) -> Attempt:  # each kind applies the job's timeout itself
        outcome = _attempt(ctx, job, token)
        if not outcome.ok:
            raise _AttemptFailed(outcome)
        return outcome

    def retrying(failure: http_client.CallFailed) -> None:
        ctx.log.info("declared_job_retrying", job=job.name, error=SECRETS(failure.reason))

    try:
        # No budget across attempts: every attempt has the job's whole timeout.
        return policy.call(
            attempt,
            timeout_s=job.timeout_s,
            budget_s=math.inf,
            should_stop=ctx.should_stop,
            on_retry=retrying,
        )
    except _AttemptFailed as failed:
        return failed.attempt


def _attempt(ctx: JobContext, job: Declared, token: str | None) -> Attempt:
    """One try, by the runner of the job's kind; a kind without one is refused."""
    runner = KIND_RUNNERS.get(job.kind)
    if runner is None:
        raise ValueError(f"no runner for the job kind {job.kind!r}")
    return runner(ctx, job, token)


def _run_http(ctx: JobContext, job: Declared, token: str | None) -> Attempt:
    assert isinstance(job.action, HttpCall)
    missing = _missing_token(job, token)
    if missing is not None:
        return Attempt(False, error=missing, retryable=False)
    return _http(ctx, job.action, token, job.timeout_s)


def _missing_token(job: Declared, token: str | None) -> str | None:
    """Why the job cannot send its request: the variable its `token_env` names is not set
    where this process runs (never sent without it: the app would see an anonymous call)."""
    variable = job.action.token_env if isinstance(job.action, HttpCall) else None
    if not variable or token:
        return None
    return f"the variable {variable} (jobs.{job.name}.http.token_env) is not set in this process"


def _run_command(ctx: JobContext, job: Declared, token: str | None) -> Attempt:
    assert isinstance(job.action, Command)
    with tempfile.TemporaryDirectory(prefix="worker-run-") as folder:
        # A command reports its progress as a handler does: {"done": N, "total": M} in
        # the file this variable names.
        progress_path = Path(folder) / "progress.json"
        env = {**os.environ, **job.action.env, PROGRESS_ENV: str(progress_path)}
        argv, cwd = list(job.action.argv), job.action.cwd
        return _child_attempt(ctx, argv, env, cwd, job.timeout_s, progress_path=progress_path)


def _run_python(ctx: JobContext, job: Declared, token: str | None) -> Attempt:
    assert isinstance(job.action, PythonCall)
    return _python(ctx, job.action, job.timeout_s)


def _run_sql(ctx: JobContext, job: Declared, token: str | None) -> Attempt:
    assert isinstance(job.action, SqlStatement)
    return _sql(ctx, job.action, job.timeout_s)


# The kinds a jobs file may declare (jobfile.KINDS), each with its runner.
KIND_RUNNERS: dict[str, Callable[[JobContext, Declared, str | None], Attempt]] = {
    "http": _run_http,
    "command": _run_command,
    "python": _run_python,
    "sql": _run_sql,
}


def _record(ctx: JobContext, job: Declared, attempt: Attempt) -> None:
    result = ctx.result
    result.output = SECRETS(clip(attempt.output, attempt.dropped)) if attempt.output else None
    result.result = _masked(attempt.result)
    if attempt.ok:
        result.ok()
    else:
        result.error = SECRETS(attempt.error or "failed")
        result.fail(job.name, result.error)
    interrupted = ctx.should_stop() and not attempt.ok
    failed = not attempt.ok and not interrupted
    # A failure is an error a person reads in the log, with its (masked) reason.
    log = ctx.log.error if failed else ctx.log.info
    log(
        "declared_job_finished",
        job=job.name,
        kind=job.kind,
        status="interrupted" if interrupted else ("success" if attempt.ok else "failed"),
        duration_ms=int((time.monotonic() - ctx.started) * 1000),
        **({"error": result.error} if not attempt.ok else {}),
        **(attempt.fields or {}),
    )


def _masked(value: Any) -> Any:
    """`value` with every known secret in its strings replaced by `***`."""
    if value is None or not SECRETS:
        return value
    return json.loads(SECRETS(json.dumps(value)))


def clip(text: str, dropped: int = 0) -> str:
    """The last OUTPUT_MAX_BYTES of `text` (UTF-8), marked at the start when cut.

    `dropped` counts bytes already cut before `text`.
    """
    data = text.encode("utf-8", "replace")
    if len(data) > OUTPUT_MAX_BYTES:
        dropped += len(data) - OUTPUT_MAX_BYTES
        text = data[-OUTPUT_MAX_BYTES:].decode("utf-8", "ignore")
    return f"[output cut: {dropped} earlier bytes not kept]\n{text}" if dropped else text


# --- http --------------------------------------------------------------------------------


def _http(ctx: JobContext, call: HttpCall, token: str | None, timeout_s: int) -> Attempt:
    headers = dict(call.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {} if call.json is None else {"json": call.json}
    bounds = http_client.Bounds(timeout_s, ctx.settings.http_max_body_bytes)

    def send(_: None) -> http_client.Answer:
        return http_client.fetch(
            ctx.http,
            call.method,
            call.url,
            bounds=bounds,
            should_stop=ctx.should_stop,
            error_body_bytes=HTTP_BODY_KEPT,
            headers=headers,
            **body,
        )

    # From a helper thread, so a stop abandons a call that hangs: nothing of it is used.
    outcome = next(map_unordered(send, [None], limit=1, should_stop=ctx.should_stop), None)
    if outcome is None or isinstance(outcome[1], http_client.Stopped):
        return Attempt(False, error="stopped", retryable=False)
    answer = outcome[1]
    if isinstance(answer, http_client.CallFailed):
        return _http_failure(answer)
    if isinstance(answer, Exception):
        return Attempt(False, error=f"internal_error: {type(answer).__name__}", retryable=False)
    text = answer.body[:HTTP_BODY_KEPT].decode("utf-8", "replace")
    return Attempt(
        True,
        output=f"HTTP {answer.status_code}\n{text}",
        result=_json_object_or_none(answer),
        fields={"status_code": answer.status_code},
    )


def _http_failure(exc: http_client.CallFailed) -> Attempt:
    """A failed call's record: an error answer's status and the start of its body."""
    status = {} if exc.status_code is None else {"status_code": exc.status_code}
    output = ""
    if exc.status_code is not None:
        text = exc.body[:HTTP_BODY_KEPT].decode("utf-8", "replace")
        output = f"HTTP {exc.status_code}\n{text}" if text else f"HTTP {exc.status_code}"
    return Attempt(
        False,
        output=output,
        error=str(exc),
        retryable=exc.transient,
        retry_after_s=exc.retry_after_s,
        fields=status,
    )


def _json_object_or_none(answer: http_client.Answer) -> Any:
    """The answer's JSON object for the run's `result`; None for any other answer."""
    try:
        value = answer.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- sql ---------------------------------------------------------------------------------


def _sql(ctx: JobContext, statement: SqlStatement, timeout_s: int) -> Attempt:
    with _cancelled_on_stop(ctx), ctx.guard() as outcome, ctx.transaction():
        ctx.conn.execute(db.query("db.statement_timeout"), {"timeout": f"{timeout_s * 1000}ms"})
        cursor = ctx.conn.execute(statement.sql.encode())
        rowcount = cursor.rowcount
    if outcome.error is not None:
        if ctx.should_stop():
            return Attempt(False, error="stopped", retryable=False)
        timed_out = "statement timeout" in outcome.error
        return Attempt(False, error="timeout" if timed_out else outcome.error)
    return Attempt(True, result={"rowcount": rowcount}, fields={"rowcount": rowcount})


@contextlib.contextmanager
def _cancelled_on_stop(ctx: JobContext) -> Iterator[None]:
    """While the block runs, a stop cancels the statement in progress on `ctx.conn`."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if ctx.should_stop():
                ctx.conn.cancel_safe()
                return

    watcher = threading.Thread(target=watch, name="sql-stop-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


# --- command and python: a child process in its own process group (supervisor.Child) -----


def _python(ctx: JobContext, call: PythonCall, timeout_s: int) -> Attempt:
    with tempfile.TemporaryDirectory(prefix="worker-call-") as folder:
        result_path = Path(folder) / "result.json"
        progress_path = Path(folder) / "progress.json"
        # Unbuffered: what it printed survives a kill at its timeout.
        env = {
            **os.environ,
            "WORKER_CALL_RESULT": str(result_path),
            PROGRESS_ENV: str(progress_path),
            "PYTHONUNBUFFERED": "1",
        }
        handler = ["--handler"] if call.handler else []
        argv = [sys.executable, "-m", "worker.call", *handler, call.target]
        stdin = json.dumps(dict(call.kwargs))
        attempt = _child_attempt(ctx, argv, env, None, timeout_s, stdin, progress_path)
        answer = _read_answer(result_path)
    if "error" in answer:
        attempt.ok, attempt.error = False, answer["error"]
    elif attempt.ok:
        attempt.result = answer.get("result")
    return attempt


def _read_answer(path: Path) -> dict[str, Any]:
    """What `worker.call` wrote: `{"result": ...}` or `{"error": ...}`; {} when nothing usable."""
    try:
        answer = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return answer if isinstance(answer, dict) else {}


def _child_attempt(
    ctx: JobContext,
    argv: list[str],
    env: Mapping[str, str],
    cwd: str | None,
    timeout_s: int,
    stdin: str | None = None,
    progress_path: Path | None = None,
) -> Attempt:
    try:
        child = Child.start(argv, env=env, cwd=cwd, stdin=stdin, keep_bytes=OUTPUT_MAX_BYTES)
    except OSError as exc:
        return Attempt(False, error=_start_error(argv[0], cwd, exc), retryable=False)
    stop_grace_s = max(ctx.settings.shutdown_grace_s - STOP_KILL_MARGIN_S, 0.1)
    live = LiveRun(
        ctx.conn,
        ctx.log,
        None if ctx.fence is None else ctx.fence.run_id,
        output=child.output_so_far,
        progress=_progress_reader(progress_path),
        mask=lambda text: SECRETS(clip(text)),
    )
    ending = child.wait(
        timeout_s, should_stop=ctx.should_stop, stop_grace_s=stop_grace_s, on_tick=live.tick
    )
    output, dropped = child.output()
    code = child.returncode
    error = ending or (None if code == 0 else f"exit code {code}")
    return Attempt(
        error is None, output=output, error=error, fields={"exit_code": code}, dropped=dropped
    )


def _progress_reader(path: Path | None) -> Callable[[], Progress]:
    """The child's progress as last read whole: a command's shell may be caught mid-write."""
    last: list[Progress] = [(None, None)]

    def read() -> Progress:
        value = read_progress(path)
        if value != (None, None):
            last[0] = value
        return last[0]

    return read


def _start_error(program: str, cwd: str | None, exc: OSError) -> str:
    """Why a child could not start, blaming what was missing: its `cwd` or its program."""
    if cwd is not None and not Path(cwd).is_dir():
        return f"cannot start {program}: its cwd {cwd} is not a directory"
    return f"cannot start {program}: {exc.strerror}"


def spec_runner(job: Declared, token: str | None) -> Callable[[JobContext], None]:
    """The `run` of a declared job's JobSpec."""

    def run_declared(ctx: JobContext) -> None:
        run(ctx, job, token)

    return run_declared
