"""The claim's rules as a pure function (`claims.decide`): no database, milliseconds each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.claims import Decision, decide
from worker.schedules import Policy
from worker.vocab import Mode, Refusal, Trigger

NOW = datetime(2026, 12, 2, 2, 0, 30, tzinfo=UTC)
DUE = NOW - timedelta(seconds=30)
OWED_FOR = NOW - timedelta(hours=1)
DEFAULT = Policy()


def row(**fields: Any) -> dict[str, Any]:
    """A job's ledger row as the loop reads it: not due, nothing owed or requested."""
    base = {
        "now": NOW,
        "next_due_at": NOW + timedelta(hours=1),
        "paused": False,
        "leased": False,
        "run_requested_at": None,
        "run_requested_by": None,
        "owed_run_id": None,
        "owed_for": None,
        "owed_attempt": None,
    }
    return {**base, **fields}


def owed(**fields: Any) -> dict[str, Any]:
    return row(owed_run_id=41, owed_for=OWED_FOR, owed_attempt=1, **fields)


def test_nothing_due_owed_or_requested_writes_nothing() -> None:
    assert decide(row(), Mode.SCHEDULED, DEFAULT) == Decision(refusal=Refusal.NOT_DUE, write=False)


def test_a_due_occurrence_runs_as_its_first_attempt() -> None:
    assert decide(row(next_due_at=DUE), Mode.SCHEDULED, DEFAULT) == Decision(
        Trigger.SCHEDULE, DUE, 1
    )


def test_an_owed_occurrence_runs_again_as_the_next_attempt_of_the_same_occurrence() -> None:
    assert decide(owed(), Mode.SCHEDULED, DEFAULT) == Decision(Trigger.RETRY, OWED_FOR, 2)


def test_a_due_occurrence_supersedes_an_owed_one() -> None:
    # Coalescing: a later occurrence is already due, so that one runs instead.
    assert decide(owed(next_due_at=DUE), Mode.SCHEDULED, DEFAULT) == Decision(
        Trigger.SCHEDULE, DUE, 1
    )


def test_an_owed_occurrence_is_run_whatever_the_start_request_says() -> None:
    # RUN_ON_START=true set a request; the owed occurrence is what the start runs.
    decision = decide(
        owed(run_requested_at=NOW, run_requested_by="startup"), Mode.SCHEDULED, DEFAULT
    )
    assert decision == Decision(Trigger.RETRY, OWED_FOR, 2)


def test_an_owed_start_up_run_is_retried_without_an_occurrence() -> None:
    decision = decide(row(owed_run_id=7, owed_for=None, owed_attempt=2), Mode.DUE, DEFAULT)
    assert decision == Decision(Trigger.RETRY, None, 3)


def test_a_request_runs_when_nothing_is_due_or_owed() -> None:
    asked = row(run_requested_at=NOW, run_requested_by="startup")
    assert decide(asked, Mode.SCHEDULED, DEFAULT) == Decision(Trigger.STARTUP)
    assert decide(asked, Mode.DUE, DEFAULT) == Decision(refusal=Refusal.NOT_DUE, write=False)


def test_a_persons_request_meeting_a_due_occurrence_is_served_by_the_occurrences_run() -> None:
    # One run for both, and a `schedule` one: owed if interrupted, its lateness counted.
    asked = row(next_due_at=DUE, run_requested_at=NOW, run_requested_by="manual")
    assert decide(asked, Mode.SCHEDULED, DEFAULT) == Decision(Trigger.SCHEDULE, DUE, 1)
    # A start-up request is what a start runs: its run serves the occurrence as before.
    started = row(next_due_at=DUE, run_requested_at=NOW, run_requested_by="startup")
    assert decide(started, Mode.SCHEDULED, DEFAULT) == Decision(Trigger.STARTUP, DUE, 1)
    # A paused job runs only for the person who asked, serving no occurrence.
    paused = row(next_due_at=DUE, paused=True, run_requested_at=NOW, run_requested_by="manual")
    assert decide(paused, Mode.SCHEDULED, DEFAULT) == Decision(Trigger.MANUAL)


@pytest.mark.parametrize("fields", [{"next_due_at": DUE}, {"owed_run_id": 41}])
def test_a_request_with_parameters_runs_first_leaving_the_due_or_owed_occurrence(
    fields: dict[str, Any],
) -> None:
    # Its parameters are for that run alone: the occurrence waits and runs with its own.
    asked = {
        **owed(run_requested_at=NOW, run_requested_by="manual"),
        "owed_run_id": None,
        "run_requested_kwargs": {"days": 3},
        **fields,
    }
    assert decide(asked, Mode.SCHEDULED, DEFAULT) == Decision(Trigger.MANUAL, keeps_due=True)


def test_a_leased_job_is_left_alone() -> None:
    assert decide(owed(leased=True), Mode.SCHEDULED, DEFAULT) == Decision(
        refusal=Refusal.CLAIMED_ELSEWHERE, write=False
    )


@pytest.mark.parametrize("late_s", [61, 3600])
def test_an_occurrence_later_than_max_lateness_is_consumed_without_a_run(late_s: int) -> None:
    late = NOW - timedelta(seconds=late_s)
    decision = decide(row(next_due_at=late), Mode.SCHEDULED, Policy(max_lateness_s=60))
    assert decision == Decision(refusal=Refusal.LATE, skipped=late)


def test_within_max_lateness_it_runs() -> None:
    policy = Policy(max_lateness_s=60)
    assert decide(row(next_due_at=DUE), Mode.SCHEDULED, policy).trigger is Trigger.SCHEDULE


def test_a_late_occurrence_does_not_drop_a_waiting_request() -> None:
    asked = row(
        next_due_at=NOW - timedelta(hours=2), run_requested_at=NOW, run_requested_by="manual"
    )
    assert decide(asked, Mode.SCHEDULED, Policy(max_lateness_s=60)) == Decision(Trigger.MANUAL)


def test_a_paused_jobs_due_or_owed_occurrence_is_consumed_without_a_run() -> None:
    assert decide(row(next_due_at=DUE, paused=True), Mode.SCHEDULED, DEFAULT) == Decision(
        refusal=Refusal.PAUSED
    )
    assert decide(owed(paused=True), Mode.SCHEDULED, DEFAULT) == Decision(refusal=Refusal.PAUSED)


def test_an_operator_runs_a_paused_job() -> None:
    paused = row(paused=True, run_requested_at=NOW, run_requested_by="manual")
    assert decide(paused, Mode.SCHEDULED, DEFAULT) == Decision(Trigger.MANUAL)
    assert decide(row(paused=True), Mode.MANUAL, DEFAULT) == Decision(Trigger.MANUAL)
    assert decide(row(paused=True), Mode.ONCE, DEFAULT) == Decision(
        refusal=Refusal.PAUSED, write=False
    )


def test_a_manual_run_serves_no_occurrence() -> None:
    assert decide(owed(next_due_at=DUE), Mode.MANUAL, DEFAULT) == Decision(Trigger.MANUAL)


def test_policy_lateness_is_strictly_later_than_the_limit() -> None:
    policy = Policy(max_lateness_s=60)
    assert not policy.too_late(NOW - timedelta(seconds=60), NOW)
    assert policy.too_late(NOW - timedelta(seconds=60.5), NOW)
    assert not Policy().too_late(NOW - timedelta(days=30), NOW)


def test_every_kind_a_jobs_file_may_declare_has_a_runner_and_no_other() -> None:
    from worker.jobfile import KINDS
    from worker.jobs.declared import KIND_RUNNERS

    assert sorted(KIND_RUNNERS) == sorted(KINDS)


def test_every_route_is_answered_by_a_method_of_the_app() -> None:
    from worker.web.app import ROUTES, URLS, App

    assert len(list(URLS.iter_rules())) == len(ROUTES)
    from worker.web.history import History
    from worker.web.manage import Manage

    owners = {"": App, "manage.": Manage, "history.": History}
    for _, handler, _ in ROUTES:
        prefix, _, name = handler.rpartition(".")
        assert callable(getattr(owners[prefix and prefix + "."], name, None)), handler
