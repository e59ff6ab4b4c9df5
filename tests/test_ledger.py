"""The schedule ledger: claims, leases, requests, start-up behaviour and the v1 → v2 upgrade."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg.rows import dict_row

from tests.support.databases import own_database
from tests.support.jobruns import runs_of, stop
from tests.support.processes import ROOT, WorkerProcess
from worker import claims, db, schedules
from worker.daemon import Daemon
from worker.jobs.base import JobContext
from worker.registry import JobSpec
from worker.schedules import Interval
from worker.store import ledger, processes
from worker.vocab import Claim, Mode, Refusal, RunStatus, Trigger

Spawn = Callable[..., WorkerProcess]
JOB = "probe"
HOUR = timedelta(hours=1)
LEASE_S = 30.0
CLOSED_USAGE_URL = "http://127.0.0.1:9/usage"  # nothing listens: no key, no call
MIGRATIONS = ROOT / "worker" / "sql" / "migrations"


# --- helpers ---


def job_row(conn: db.Conn, job: str = JOB) -> dict[str, Any]:
    row = conn.execute("SELECT *, now() AS now FROM worker_jobs WHERE job = %s", (job,)).fetchone()
    assert row is not None, f"no ledger row for {job}"
    return row


def register(conn: db.Conn, job: str = JOB, every_s: int = 60) -> None:
    claims.register(conn, job, "all", schedules.Interval(every_s))


def make_due(conn: db.Conn, ago: str = "3 hours 10 minutes", job: str = JOB) -> datetime:
    """Back-date the job's next due time; return it."""
    row = conn.execute(
        "UPDATE worker_jobs SET next_due_at = date_trunc('second', now()) - %s::interval"
        " WHERE job = %s RETURNING next_due_at",
        (ago, job),
    ).fetchone()
    assert row is not None
    return row["next_due_at"]  # type: ignore[no-any-return]


def lease_elsewhere(conn: db.Conn, until: str = "1 minute", job: str = JOB) -> None:
    """Another runner's lease, expiring `until` from now (negative: already expired)."""
    conn.execute(
        "UPDATE worker_jobs SET lease_owner = 'someone-else:1',"
        " lease_until = now() + %s::interval WHERE job = %s",
        (until, job),
    )


def pause(conn: db.Conn, job: str = JOB) -> None:
    ledger.set_paused(conn, job, True)


def check_values(conn: db.Conn, column: str) -> set[str]:
    """The values the CHECK constraint on worker_job_runs.`column` allows."""
    rows = conn.execute(
        "SELECT pg_get_constraintdef(c.oid) AS definition"
        "  FROM pg_constraint c JOIN pg_attribute a"
        "    ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)"
        " WHERE c.conrelid = 'worker_job_runs'::regclass AND c.contype = 'c'"
        "   AND a.attname = %s",
        (column,),
    ).fetchall()
    assert len(rows) == 1, rows
    return set(re.findall(r"'([^']*)'", rows[0]["definition"]))


def job_spec(run: Callable[[JobContext], None], name: str = JOB) -> JobSpec:
    return JobSpec(name, "all", run, lambda s: Interval(3600))


def three_items(ctx: JobContext) -> None:
    ctx.result.ok(3)


# --- the tables and the code agree ---


def test_run_statuses_and_triggers_are_the_ones_the_table_allows(conn: db.Conn) -> None:
    assert check_values(conn, "status") == {status.value for status in RunStatus}
    assert check_values(conn, "trigger") == {trigger.value for trigger in Trigger}


# --- claims, through the ledger directly ---


def test_a_job_not_yet_due_is_not_claimed(conn: db.Conn) -> None:
    register(conn)
    before = job_row(conn)

    assert claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S) is Refusal.NOT_DUE
    assert claims.claim(conn, JOB, Mode.DUE, LEASE_S) is Refusal.NOT_DUE
    after = job_row(conn)
    assert after["next_due_at"] == before["next_due_at"] > after["now"]
    assert after["lease_owner"] is None
    assert claims.claim(conn, "nobody_registered_me", Mode.ONCE, LEASE_S) is Refusal.UNKNOWN


def test_a_job_three_hours_late_is_claimed_once_and_keeps_its_phase(conn: db.Conn) -> None:
    register(conn, every_s=3600)
    due = make_due(conn, "3 hours 10 minutes")

    claim = claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S)

    assert isinstance(claim, Claim)
    assert (claim.trigger, claim.scheduled_for, claim.paused) == (Trigger.SCHEDULE, due, False)
    row = job_row(conn)
    # Missed occurrences coalesce into this run: the next is due + 4 h, 50 minutes from now.
    assert claim.next_due_at == row["next_due_at"] == due + 4 * HOUR
    assert row["now"] < row["next_due_at"] <= row["now"] + HOUR
    assert row["lease_owner"] == claim.owner == claims.owner()
    assert row["now"] < row["lease_until"] <= row["now"] + timedelta(seconds=LEASE_S)
    # The occurrence is gone: no second claim, in any mode that waits for a due time.
    assert claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S) is Refusal.NOT_DUE
    assert claims.claim(conn, JOB, Mode.DUE, LEASE_S) is Refusal.NOT_DUE


@pytest.mark.parametrize("mode", list(Mode))
def test_a_held_lease_refuses_every_mode(conn: db.Conn, mode: Mode) -> None:
    register(conn)
    due = make_due(conn, "5 minutes")
    lease_elsewhere(conn, "1 minute")

    assert claims.claim(conn, JOB, mode, LEASE_S) is Refusal.CLAIMED_ELSEWHERE
    row = job_row(conn)
    assert (row["next_due_at"], row["lease_owner"]) == (due, "someone-else:1")


def test_an_expired_lease_is_claimable(conn: db.Conn) -> None:
    register(conn)
    due = make_due(conn, "5 minutes")
    lease_elsewhere(conn, "-1 second")

    claim = claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S)

    assert isinstance(claim, Claim)
    assert claim.scheduled_for == due
    assert job_row(conn)["lease_owner"] == claims.owner()


@pytest.mark.parametrize("mode", [Mode.SCHEDULED, Mode.DUE, Mode.ONCE])
def test_a_paused_jobs_due_occurrence_is_consumed_without_a_run(conn: db.Conn, mode: Mode) -> None:
    register(conn)
    due = make_due(conn, "5 minutes")
    pause(conn)

    assert claims.claim(conn, JOB, mode, LEASE_S) is Refusal.PAUSED
    row = job_row(conn)
    assert row["next_due_at"] > row["now"]
    assert row["next_due_at"] == Interval(60).next_due(due, row["now"])
    assert (row["lease_owner"], row["lease_until"]) == (None, None)
    # Consumed: the next wake-up finds nothing due.
    assert claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S) is Refusal.NOT_DUE


def test_once_honours_the_pause_and_an_operators_manual_run_does_not(conn: db.Conn) -> None:
    register(conn)
    pause(conn)
    not_due = job_row(conn)["next_due_at"]

    assert claims.claim(conn, JOB, Mode.ONCE, LEASE_S) is Refusal.PAUSED
    assert (job_row(conn)["next_due_at"], job_row(conn)["lease_owner"]) == (not_due, None)

    claim = claims.claim(conn, JOB, Mode.MANUAL, LEASE_S)

    assert isinstance(claim, Claim)
    assert (claim.trigger, claim.scheduled_for, claim.paused) == (Trigger.MANUAL, None, True)
    row = job_row(conn)
    assert (row["next_due_at"], row["lease_owner"]) == (not_due, claims.owner())


def test_a_run_requested_for_a_paused_job_is_claimed_by_the_next_wake_up(
    conn: db.Conn,
) -> None:
    register(conn)
    pause(conn)

    assert ledger.request_run(conn, JOB) is True
    assert ledger.request_run(conn, "nobody_registered_me") is False
    assert claims.claim(conn, JOB, Mode.DUE, LEASE_S) is Refusal.NOT_DUE  # DUE ignores requests
    claim = claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S)

    assert isinstance(claim, Claim)
    assert (claim.trigger, claim.scheduled_for, claim.paused) == (Trigger.MANUAL, None, True)
    row = job_row(conn)
    assert (row["run_requested_at"], row["lease_owner"]) == (None, claims.owner())


def test_a_request_waiting_behind_a_lease_runs_once_the_lease_is_released(
    conn: db.Conn,
) -> None:
    register(conn)
    lease_elsewhere(conn, "1 minute")
    ledger.request_run(conn, JOB)

    assert claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S) is Refusal.CLAIMED_ELSEWHERE
    assert job_row(conn)["run_requested_at"] is not None  # still waiting
    conn.execute("UPDATE worker_jobs SET lease_owner = NULL, lease_until = NULL")

    claim = claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S)
    assert isinstance(claim, Claim) and claim.trigger is Trigger.MANUAL
    assert job_row(conn)["run_requested_at"] is None  # served: it runs once


def release(conn: db.Conn) -> None:
    conn.execute(
        "UPDATE worker_jobs SET lease_owner = NULL, lease_until = NULL, current_run_id = NULL"
    )


def test_a_request_meeting_a_due_occurrence_is_one_run_that_serves_the_occurrence(
    conn: db.Conn,
) -> None:
    register(conn)
    due = make_due(conn, "10 seconds")
    ledger.request_run(conn, JOB)
    claim = claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S)
    assert isinstance(claim, Claim)
    assert (claim.trigger, claim.scheduled_for) == (Trigger.SCHEDULE, due)
    row = job_row(conn)
    assert row["run_requested_at"] is None and row["next_due_at"] > row["now"]  # both served


def test_a_request_with_parameters_runs_first_and_the_due_occurrence_right_after(
    conn: db.Conn,
) -> None:
    register(conn)
    due = make_due(conn, "10 seconds")
    assert ledger.request_run(conn, JOB, {"days": 3})
    first = claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S)
    assert isinstance(first, Claim)
    assert (first.trigger, first.scheduled_for, first.kwargs) == (Trigger.MANUAL, None, {"days": 3})
    row = job_row(conn)
    assert (row["run_requested_at"], row["next_due_at"]) == (None, due)  # the occurrence waits
    assert first.next_due_at == due  # so the loop reads again as soon as the run ends

    release(conn)
    second = claims.claim(conn, JOB, Mode.SCHEDULED, LEASE_S)
    assert isinstance(second, Claim)
    assert (second.trigger, second.scheduled_for, second.kwargs) == (Trigger.SCHEDULE, due, None)
    assert job_row(conn)["next_due_at"] > due


def test_a_startup_request_skips_paused_and_leased_jobs_and_is_set_once(conn: db.Conn) -> None:
    for job in ("paused_job", "leased_job", "idle_job"):
        register(conn, job)
    pause(conn, "paused_job")
    lease_elsewhere(conn, "1 minute", job="leased_job")

    jobs = ["paused_job", "leased_job", "idle_job"]
    first = processes.register(conn, "all", "test", 4)  # the claims below are its own
    assert claims.request_startup_runs(conn, jobs, first) == ["idle_job"]
    assert claims.request_startup_runs(conn, jobs, None) == []  # a replica starting alongside
    requested = {
        r["job"]: r["run_requested_by"]
        for r in conn.execute("SELECT job, run_requested_by FROM worker_jobs ORDER BY job")
    }
    assert requested == {"idle_job": "startup", "leased_job": None, "paused_job": None}

    # The request runs once; a replica starting moments later asks for no second run.
    claim = claims.claim(conn, "idle_job", Mode.SCHEDULED, LEASE_S)
    assert isinstance(claim, Claim) and claim.trigger is Trigger.STARTUP
    record = ledger.RunRecord(RunStatus.SUCCESS, 1, 0, 0, 0, None, {}, None, None)
    ledger.finish(conn, claim, record)
    assert job_row(conn, "idle_job")["lease_owner"] is None
    assert claims.request_startup_runs(conn, jobs, None) == []  # `first` is alive
    # A restart: the process whose start-up run that was is gone, so the start runs again.
    processes.deregister(conn, first)
    assert claims.request_startup_runs(conn, jobs, None) == ["idle_job"]


@pytest.mark.parametrize(("mode", "due"), [(Mode.SCHEDULED, True), (Mode.ONCE, False)])
def test_eight_runners_claiming_at_once_get_exactly_one_claim(
    db_url: str, conn: db.Conn, mode: Mode, due: bool
) -> None:
    register(conn)
    if due:
        make_due(conn, "5 minutes")
    start = threading.Barrier(8)
    outcomes: list[Claim | Refusal | BaseException] = []
    lock = threading.Lock()

    def claim_it() -> None:
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as own:
            start.wait(timeout=10)
            try:
                outcome: Claim | Refusal | BaseException = claims.claim(own, JOB, mode, LEASE_S)
            except BaseException as exc:  # reported below, not lost in the thread
                outcome = exc
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=claim_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)

    assert len(outcomes) == 8, outcomes
    granted = [o for o in outcomes if isinstance(o, Claim)]
    assert len(granted) == 1, outcomes
    assert all(
        o in (Refusal.CLAIMED_ELSEWHERE, Refusal.NOT_DUE) for o in outcomes if o not in granted
    )


# --- the whole run, in process ---


def test_a_scheduled_run_records_its_occurrence_and_releases_the_lease(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    register(conn, every_s=3600)
    due = make_due(conn, "2 hours 30 minutes")

    outcome = daemon_for().run_job(job_spec(three_items), Mode.SCHEDULED)

    assert outcome is RunStatus.SUCCESS
    [run] = runs_of(conn)
    assert (run["trigger"], run["status"], run["scheduled_for"]) == ("schedule", "success", due)
    row = job_row(conn)
    assert (row["lease_owner"], row["lease_until"], row["current_run_id"]) == (None, None, None)
    assert row["next_due_at"] == due + 3 * HOUR
    assert row["schedule"] == "every 1h"


def test_a_once_run_of_a_job_not_due_is_manual_and_leaves_the_schedule(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    daemon = daemon_for()
    spec = job_spec(three_items)

    assert daemon.run_job(spec, Mode.ONCE) is RunStatus.SUCCESS
    next_due = job_row(conn)["next_due_at"]
    assert daemon.run_job(spec, Mode.ONCE) is RunStatus.SUCCESS

    assert [(r["trigger"], r["scheduled_for"]) for r in runs_of(conn)] == [
        ("manual", None),
        ("manual", None),
    ]
    row = job_row(conn)
    assert (row["next_due_at"], row["lease_owner"]) == (next_due, None)


def test_a_paused_job_is_skipped_by_once_and_run_by_an_operator(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    register(conn, every_s=3600)
    pause(conn)
    with structlog.testing.capture_logs() as logs:
        daemon = daemon_for()
        skipped = daemon.run_job(job_spec(three_items), Mode.ONCE)
        ran = daemon.run_job(job_spec(three_items), Mode.MANUAL)

    assert (skipped, ran) == (Refusal.PAUSED, RunStatus.SUCCESS)
    assert [e["job"] for e in logs if e["event"] == "job_paused"] == [JOB]
    [started] = [e for e in logs if e["event"] == "job_started"]
    assert (started["trigger"], started["paused"]) == ("manual", True)
    assert [(r["trigger"], r["status"]) for r in runs_of(conn)] == [("manual", "success")]


def test_a_dead_runners_running_row_is_marked_abandoned(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    register(conn, every_s=3600)
    make_due(conn, "5 minutes")
    dead = conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at)"
        " VALUES (%s, 'schedule', 'running', 'gone-host', 4242, now() - interval '2 hours')"
        " RETURNING id",
        (JOB,),
    ).fetchone()
    assert dead is not None

    with structlog.testing.capture_logs() as logs:
        outcome = daemon_for().run_job(job_spec(three_items), Mode.SCHEDULED)

    assert outcome is RunStatus.SUCCESS
    [abandoned, run] = runs_of(conn)
    assert (abandoned["id"], abandoned["status"]) == (dead["id"], "abandoned")
    assert abandoned["error"]
    assert (run["status"], run["trigger"]) == ("success", "schedule")
    [logged] = [e for e in logs if e["event"] == "run_abandoned"]
    assert (logged["abandoned_run_id"], logged["pid"]) == (dead["id"], 4242)
    finished = conn.execute(
        "SELECT finished_at IS NOT NULL AS finished FROM worker_job_runs WHERE id = %s",
        (dead["id"],),
    ).fetchone()
    assert finished == {"finished": True}


def test_a_run_that_loses_its_lease_stops_starting_items_and_ends_interrupted(
    db_url: str, conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    items = 200  # 10 s at most: the lease is renewed (and found lost) after 1 s
    started: list[int] = []
    pace = threading.Event()  # never set: wait() only paces the items

    def pass_that_loses_its_lease(ctx: JobContext) -> None:
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute(
                "UPDATE worker_jobs SET lease_owner = 'someone-else:1',"
                " lease_until = now() + interval '1 minute' WHERE job = %s",
                (JOB,),
            )
        for item in range(items):
            if ctx.should_stop():
                return
            started.append(item)
            ctx.result.ok()
            pace.wait(0.05)

    with structlog.testing.capture_logs() as logs:
        daemon = daemon_for(LEASE_SECONDS="3")
        began = time.monotonic()
        outcome = daemon.run_job(job_spec(pass_that_loses_its_lease), Mode.ONCE)
        took_s = time.monotonic() - began

    assert outcome is RunStatus.INTERRUPTED
    assert 0 < len(started) < items
    assert took_s < 4.0, f"the run went on {took_s:.1f}s without its lease"
    [run] = conn.execute("SELECT id, status, succeeded FROM worker_job_runs").fetchall()
    assert (run["status"], run["succeeded"]) == ("interrupted", len(started))
    [lost] = [e for e in logs if e["event"] == "lease_lost"]
    assert lost["run_id"] == run["id"]
    # The new holder's lease is left alone.
    row = job_row(conn)
    assert row["lease_owner"] == "someone-else:1" and row["lease_until"] > row["now"]


# --- RUN_ON_START after downtime, as users run it ---


def start_after_downtime(
    conn: db.Conn, spawn: Spawn, run_on_start: str
) -> tuple[WorkerProcess, datetime]:
    """Register quota as a previous process did, back-date it 3 h, start the daemon."""
    claims.register(conn, "quota", "quota", Interval(3600))
    due = make_due(conn, "3 hours", job="quota")
    worker = spawn(
        "quota",
        env={
            "DATABASE_URL": conn.info.dsn,
            "RUN_ON_START": run_on_start,
            "TAVILY_USAGE_URL": CLOSED_USAGE_URL,
        },
    )
    worker.wait_for("scheduler_loop_started")
    return worker, due


def test_run_on_start_true_makes_one_startup_run(conn: db.Conn, spawn: Spawn) -> None:
    worker, due = start_after_downtime(conn, spawn, "true")
    worker.wait_for("job_finished", status="success")
    assert stop(worker) == 0

    assert [(r["trigger"], r["status"]) for r in runs_of(conn)] == [("startup", "success")]
    assert job_row(conn, "quota")["next_due_at"] == due + 4 * HOUR
    assert len(worker.events("job_started")) == 1


def test_run_on_start_missed_runs_the_missed_occurrence_once(conn: db.Conn, spawn: Spawn) -> None:
    worker, due = start_after_downtime(conn, spawn, "missed")
    worker.wait_for("job_finished", status="success")
    assert stop(worker) == 0

    assert [(r["trigger"], r["status"], r["scheduled_for"]) for r in runs_of(conn)] == [
        ("schedule", "success", due)
    ]
    assert job_row(conn, "quota")["next_due_at"] == due + 4 * HOUR


def test_run_on_start_false_skips_missed_occurrences(conn: db.Conn, spawn: Spawn) -> None:
    worker, due = start_after_downtime(conn, spawn, "false")
    skipped = worker.wait_for("occurrences_skipped")
    assert stop(worker) == 0

    assert runs_of(conn) == []
    assert worker.events("job_started") == []
    assert (skipped["job"], datetime.fromisoformat(skipped["missed_due_at"])) == ("quota", due)
    row = job_row(conn, "quota")
    assert row["now"] < row["next_due_at"] == due + 4 * HOUR


# --- the jobs file ---


def test_a_jobs_file_schedule_reaches_the_ledger(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text('[jobs.quota]\nschedule = "*/30 * * * *"\n', encoding="utf-8")

    worker = spawn(
        "quota",
        "--once",
        env={
            "DATABASE_URL": conn.info.dsn,
            "WORKER_JOBS_FILE": str(jobs_file),
            "TAVILY_USAGE_URL": CLOSED_USAGE_URL,
        },
    )

    assert worker.wait() == 0, worker.stderr()
    row = job_row(conn, "quota")
    assert row["schedule"] == "cron */30 * * * * UTC"
    due = row["next_due_at"]
    assert (due.minute % 30, due.second, due.microsecond) == (0, 0, 0)
    assert row["now"] < due <= row["now"] + timedelta(minutes=30)


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ('schedule = "every 0s"', "jobs.quota.schedule"),
        ('schedule = "61 * * * *"', "jobs.quota.schedule"),
        ('timezone = "Mars/Olympus"', "jobs.quota.timezone"),
        ('on_start = "sometimes"', "jobs.quota.on_start"),
        ('run_every = "1h"', "jobs.quota.run_every"),
    ],
)
def test_a_bad_jobs_file_exits_2_naming_the_key_and_writes_nothing(
    conn: db.Conn, spawn: Spawn, tmp_path: Path, entry: str, named: str
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(f"[jobs.quota]\n{entry}\n", encoding="utf-8")

    worker = spawn(
        "quota",
        "--once",
        env={"DATABASE_URL": conn.info.dsn, "WORKER_JOBS_FILE": str(jobs_file)},
    )

    assert worker.wait() == 2
    assert named in worker.stderr()
    assert conn.execute("SELECT job FROM worker_jobs").fetchall() == []
    assert runs_of(conn) == []


# --- upgrading a v1 database ---

V1_RUNS = [
    ("quota", "startup", "success"),
    ("quota", "schedule", "partial"),
    ("quota", "schedule", "failed"),
    ("cleanup_tokens", "manual", "interrupted"),
    ("replenish", "schedule", "running"),
]


def apply_v1_schema(conn: db.Conn) -> None:
    """The database as v1's `migrate` left it: only 0001, recorded as applied."""
    with conn.transaction():
        conn.execute(
            "CREATE TABLE IF NOT EXISTS worker_schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute((MIGRATIONS / "0001_worker_tables.sql").read_bytes())
        conn.execute("INSERT INTO worker_schema_migrations (version) VALUES ('0001_worker_tables')")
    conn.execute((ROOT / "worker" / "sql" / "app_tables.sql").read_bytes())  # the app's own


def insert_v1_rows(conn: db.Conn) -> None:
    for job, trigger, status in V1_RUNS:
        conn.execute(
            "INSERT INTO worker_job_runs (job, trigger, status, host, pid, total, succeeded)"
            " VALUES (%s, %s, %s, 'v1-host', 77, 4, 3)",
            (job, trigger, status),
        )
    conn.execute(
        "INSERT INTO worker_jobs (job, paused, paused_at)"
        " VALUES ('quota', true, now() - interval '1 day')"
    )
    conn.execute(
        "INSERT INTO worker_alerts (type, level, job, message)"
        " VALUES ('run_failed', 'ERROR', 'quota', 'quota failed')"
    )
    conn.execute(
        "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota)"
        " VALUES ('tvly-upgrade-secretsecret', 1000, 5)"
    )


def test_a_v1_database_upgrades_keeping_runs_and_pauses(server_url: str, spawn: Spawn) -> None:
    name = "worker_upgrade_v1"
    with (
        own_database(server_url, name) as url,
        psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn,
    ):
        apply_v1_schema(conn)
        insert_v1_rows(conn)
        runs_before = conn.execute(
            "SELECT id, job, trigger, status, started_at, total, succeeded"
            " FROM worker_job_runs ORDER BY id"
        ).fetchall()

        later = sorted(p.stem for p in (ROOT / "worker/sql/migrations").glob("*.sql"))[1:]
        assert later[0] == "0002_schedule_ledger"
        assert db.migrate(conn) == later  # every migration after 0001, the ledger first
        assert db.migrate(conn) == []

        runs_after = conn.execute(
            "SELECT id, job, trigger, status, started_at, total, succeeded, scheduled_for,"
            " output, result FROM worker_job_runs ORDER BY id"
        ).fetchall()
        assert [{k: r[k] for k in runs_before[0]} for r in runs_after] == runs_before
        assert {(r["scheduled_for"], r["output"], r["result"]) for r in runs_after} == {
            (None, None, None)
        }
        quota = job_row(conn, "quota")
        assert quota["paused"] is True and quota["paused_at"] is not None
        new_columns = ("schedule", "next_due_at", "run_requested_at", "lease_owner")
        assert [quota[c] for c in new_columns] == [None, None, None, None]
        assert conn.execute("SELECT count(*) AS n FROM worker_alerts").fetchone() == {"n": 1}

        worker = spawn(
            "quota", "--once", env={"DATABASE_URL": url, "TAVILY_USAGE_URL": CLOSED_USAGE_URL}
        )
        assert worker.wait() == 0
        assert worker.events("job_paused") != []
        assert worker.events("job_started") == []
        assert len(runs_of(conn)) == len(V1_RUNS)
        quota = job_row(conn, "quota")
        assert (quota["paused"], quota["schedule"]) == (True, "every 1h")
        assert quota["next_due_at"] > quota["now"]
        key = conn.execute("SELECT remaining_quota FROM tavily_api_keys").fetchone()
        assert key == {"remaining_quota": 5}
