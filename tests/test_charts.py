"""The charts' geometry (`worker/web/charts.py`) as pure functions, and their reads
(`worker/store/charts.py`) on a real PostgreSQL: the hours the database cuts, and plans that
walk the index rather than the table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from worker import db
from worker.store import charts as chart_store
from worker.vocab import RunStatus
from worker.web import charts, sparklines
from worker.web.charts import PLOT_HEIGHT, PLOT_TOP

BASELINE = PLOT_TOP + PLOT_HEIGHT
RANGE_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}  # bounded by an index
JOB_INDEXES = {"worker_job_runs_job_latest_idx", "worker_job_runs_job_started_idx"}
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def run(id: int, status: str = "success", duration_ms: int | None = 1000, **more: Any) -> dict:
    return {
        "id": id,
        "status": status,
        "started_at": T0 + timedelta(minutes=id),
        "duration_ms": duration_ms,
        **more,
    }


def bars(chart: charts.Chart) -> list[charts.Rect]:
    return [rect for column in chart.columns for rect in column.segments]


# --- the duration chart ------------------------------------------------------------------


def test_bar_heights_are_proportional_to_duration_on_one_baseline() -> None:
    # Newest first, as the store reads them; the chart puts the oldest on the left.
    rows = [run(4, duration_ms=4000), run(3, duration_ms=2000), run(2, duration_ms=1000)]
    chart = charts.durations_chart(rows, "UTC")
    one, two, four = bars(chart)
    assert two.height == pytest.approx(2 * one.height)
    assert four.height == pytest.approx(4 * one.height)
    assert four.height == pytest.approx(PLOT_HEIGHT * 4000 / 5000)  # the scale's top: 5 s
    assert {round(bar.y + bar.height, 6) for bar in (one, two, four)} == {BASELINE}
    assert one.x < two.x < four.x
    assert [c.href for c in chart.columns] == ["/runs/2", "/runs/3", "/runs/4"]
    assert chart.gridlines[0] == charts.Gridline(PLOT_TOP, "5 s")
    assert chart.gridlines[1].label == "2.5 s"


def test_a_running_run_stands_at_its_time_so_far_and_an_instant_one_still_shows() -> None:
    rows = [
        run(3, "running", duration_ms=None, elapsed_ms=10_000),
        run(2, duration_ms=5000),
        run(1, "failed", duration_ms=0),
    ]
    instant, five, running = bars(charts.durations_chart(rows, "UTC"))
    assert running.height == pytest.approx(PLOT_HEIGHT)  # 10 s is the top
    assert five.height == pytest.approx(PLOT_HEIGHT / 2)
    assert instant.height == charts.MIN_BAR_PX
    assert "running for 10.0s" in charts.durations_chart(rows, "UTC").columns[2].title


def test_colours_follow_the_status_and_failures_carry_a_pattern_too() -> None:
    rows = [run(i, status) for i, status in enumerate(["success", "failed", "partial"], 1)]
    fills = [bar.fill for bar in bars(charts.durations_chart(rows, "UTC"))]
    assert fills == ["#009E73", "url(#chart-failed)", "url(#chart-partial)"]
    patterns = {pattern.id: pattern for pattern in charts.PATTERNS}
    assert patterns["chart-failed"].colour == charts.STYLES["failed"].colour
    assert patterns["chart-failed"].kind != patterns["chart-partial"].kind
    # Every status the runs table may hold has a style of its own, each colour different.
    assert set(charts.STYLES) == {status.value for status in RunStatus}
    colours = [style.colour for style in charts.STYLES.values()]
    assert len(set(colours)) == len(colours)
    assert charts.fill("failed", patterned=False) == "#D55E00"


def test_an_empty_history_draws_no_bar_and_says_so() -> None:
    chart = charts.durations_chart([], "UTC")
    assert chart.columns == () and chart.empty and chart.labels == ()
    assert chart.summary == "no runs yet"
    since = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
    hourly = charts.hourly_chart([], since, "UTC")
    assert len(hourly.columns) == charts.HOURS and hourly.empty
    assert hourly.summary.startswith("0 runs")
    assert charts.legend([]) == ()
    assert sparklines.sparkline([]).marks == ()


def test_one_run_is_one_bar_at_the_right_edge_with_its_title() -> None:
    chart = charts.durations_chart([run(7, "partial", duration_ms=1500)], "Asia/Shanghai")
    [column] = chart.columns
    [bar] = column.segments
    slot = 100 / charts.MIN_SLOTS  # never wider than a twentieth
    assert bar.width == pytest.approx(slot * (1 - charts.GAP))
    assert bar.x + bar.width == pytest.approx(100 - slot * charts.GAP / 2)
    assert bar.height == pytest.approx(PLOT_HEIGHT * 1500 / 2000)
    assert column.title == "run 7 · partial · 1.5s · started 2026-12-01 18:07:00 Asia/Shanghai"
    assert [(label.x, label.text, label.anchor) for label in chart.labels] == [
        (100, "12-01 18:07", "end")
    ]


def test_a_full_history_spans_the_width_and_labels_both_ends() -> None:
    rows = [run(i) for i in range(charts.LAST_RUNS, 0, -1)]
    chart = charts.durations_chart(rows, "UTC")
    assert len(chart.columns) == charts.LAST_RUNS
    first, last = chart.columns[0].segments[0], chart.columns[-1].segments[0]
    assert first.x == pytest.approx(100 / charts.LAST_RUNS * charts.GAP / 2)
    assert last.x + last.width == pytest.approx(100 - 100 / charts.LAST_RUNS * charts.GAP / 2)
    assert [label.anchor for label in chart.labels] == ["start", "end"]


def test_scales_round_up_to_a_nice_top() -> None:
    assert charts.nice_duration_ms(1500) == 2000
    assert charts.nice_duration_ms(2000) == 2000
    assert charts.nice_duration_ms(61_000) == 120_000
    assert charts.nice_duration_ms(30 * 3_600_000) == 2 * 86_400_000
    assert [charts.nice_count(n) for n in (0, 1, 3, 7, 11, 120)] == [1, 1, 5, 10, 20, 200]
    assert [charts.short_duration(ms) for ms in (500, 7500, 900_000, 7_200_000)] == [
        "500 ms",
        "7.5 s",
        "15 min",
        "2 h",
    ]


# --- the runs-per-hour chart -------------------------------------------------------------


def hour_row(since: datetime, index: int, status: str, runs: int) -> dict[str, Any]:
    return {"hour": since + timedelta(hours=index), "status": status, "runs": runs}


def test_seven_days_of_hours_with_gaps_stacked_by_status() -> None:
    since = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    rows = [
        hour_row(since, 0, "success", 1),
        hour_row(since, 5, "failed", 1),
        hour_row(since, 5, "success", 3),
        hour_row(since, 167, "partial", 2),
        hour_row(since, -1, "success", 50),  # before the window: left out
        hour_row(since, 168, "success", 50),  # after it
    ]
    chart = charts.hourly_chart(rows, since, "UTC")
    assert len(chart.columns) == 7 * 24
    filled = [i for i, column in enumerate(chart.columns) if column.segments]
    assert filled == [0, 5, 167]
    success, failed = chart.columns[5].segments  # success at the bottom, failed on top
    assert (success.status, failed.status) == ("success", "failed")
    assert success.y + success.height == pytest.approx(BASELINE)
    assert failed.y + failed.height == pytest.approx(success.y)
    assert success.height == pytest.approx(3 * failed.height)
    assert success.height + failed.height == pytest.approx(PLOT_HEIGHT * 4 / 5)  # top: 5
    assert chart.gridlines[0].label == "5 per hour"
    assert chart.columns[5].title == "Wed 2026-11-25 16:00-17:00 UTC: 4 runs (3 success, 1 failed)"
    assert chart.columns[6].title.endswith("no runs")
    assert chart.columns[6].segments == ()
    assert chart.summary.startswith("7 runs")
    slot = 100 / (7 * 24)
    x = chart.columns[167].segments[0].x
    assert x == pytest.approx(167 * slot + slot * charts.GAP / 2, abs=1e-3)


def test_hours_and_days_are_those_of_the_jobs_zone() -> None:
    # Kolkata is UTC+05:30: its hours begin at half past, its midnight is 18:30 UTC.
    since = datetime(2026, 11, 25, 18, 30, tzinfo=UTC)  # 2026-11-26 00:00 in Kolkata
    chart = charts.hourly_chart([hour_row(since, 10, "success", 1)], since, "Asia/Kolkata")
    assert chart.columns[10].title.startswith("Thu 2026-11-26 10:00-11:00 Asia/Kolkata: 1 run")
    slot = 100 / (7 * 24)
    assert chart.ticks == tuple(round(day * 24 * slot, 3) for day in range(1, 7))
    assert [label.text for label in chart.labels] == [
        "Thu 26", "Fri 27", "Sat 28", "Sun 29", "Mon 30", "Tue 1", "Wed 2"
    ]  # fmt: skip
    # The same window in UTC starts its days at 00:00 UTC: Kolkata's first day (18:30 UTC
    # on) holds only five and a half UTC hours of the 25th.
    utc_since = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)
    utc = charts.hourly_chart([], utc_since, "UTC")
    assert utc.ticks[0] == pytest.approx(round(6 * slot, 3))
    assert utc.labels[0].text == "Thu 26"  # the 6 hours of the 25th are too few to label


def test_the_legend_lists_the_statuses_shown_in_stacking_order() -> None:
    legend = charts.legend(["failed", "success", "failed", "abandoned"])
    assert [(entry.status, entry.fill) for entry in legend] == [
        ("success", "#009E73"),
        ("failed", "url(#chart-failed)"),
        ("abandoned", "url(#chart-abandoned)"),
    ]


# --- the sparkline -----------------------------------------------------------------------


def test_a_sparkline_puts_successes_above_the_midline_and_failures_below() -> None:
    rows = [run(i, "failed" if i % 5 == 0 else "success") for i in range(25, 0, -1)]
    spark = sparklines.sparkline(rows)
    assert len(spark.marks) == sparklines.SPARK_RUNS  # the newest 20 of 25
    for mark, status in zip(spark.marks, [r["status"] for r in reversed(rows[:20])], strict=True):
        assert mark.status == status
        if status == "success":
            assert mark.y + mark.height <= spark.mid and mark.fill == "#009E73"
        else:
            assert mark.y >= spark.mid and mark.fill == "#D55E00"
    assert spark.marks[-1].x + spark.marks[-1].width == pytest.approx(spark.width - 0.5)
    assert spark.title == "last 20 runs, newest on the right: 16 success, 4 failed; latest failed"


def test_a_sparklines_marks_are_drawn_as_one_path_per_colour() -> None:
    spark = sparklines.sparkline([run(3, "failed"), run(2), run(1)])
    assert spark.paths == (
        ("#009E73", "M85.5 1h4v10h-4zM90.5 1h4v10h-4z"),
        ("#D55E00", "M95.5 11h4v10h-4z"),
    )


def test_a_short_sparkline_is_right_aligned() -> None:
    spark = sparklines.sparkline([run(2, "interrupted"), run(1, "partial")])
    partial, interrupted = spark.marks
    assert interrupted.x + interrupted.width == pytest.approx(spark.width - 0.5)
    assert partial.y + partial.height == spark.mid  # rises, less than a success
    assert interrupted.y < spark.mid < interrupted.y + interrupted.height  # on the midline


# --- the reads, on PostgreSQL ------------------------------------------------------------


INSERT_RUN = (
    "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at, duration_ms)"
    " VALUES (%(job)s, 'schedule', %(status)s, 'test', 1,"
    "  CASE WHEN %(kolkata)s THEN date_trunc('hour', now(), 'Asia/Kolkata') ELSE now() END"
    "  - make_interval(secs => %(ago_s)s), 1000)"
)


def insert_run(
    conn: db.Conn, job: str, ago_s: float, status: str = "success", *, kolkata: bool = False
) -> None:
    """A run started `ago_s` before now, or before the start of Kolkata's current hour."""
    params = {"job": job, "status": status, "ago_s": ago_s, "kolkata": kolkata}
    conn.execute(INSERT_RUN, params)


def test_the_database_cuts_hours_on_the_zones_clock(conn: db.Conn) -> None:
    # One minute either side of a Kolkata hour's start (half past a UTC hour): two Kolkata
    # hours, one UTC hour. A run older than the window is not counted.
    insert_run(conn, "export", 2 * 3600 + 60, kolkata=True)
    insert_run(conn, "export", 2 * 3600 - 60, "failed", kolkata=True)
    insert_run(conn, "export", 8 * 86400)
    insert_run(conn, "other", 0)
    since, rows = chart_store.runs_per_hour(conn, "export", "Asia/Kolkata", charts.HOURS)
    assert since.astimezone(ZoneInfo("Asia/Kolkata")).minute == 0
    counts = charts.bucket_counts(rows, since, charts.HOURS)
    assert [i for i, c in enumerate(counts) if c] == [charts.HOURS - 4, charts.HOURS - 3]
    assert counts[-3] == {"failed": 1}
    utc_since, utc_rows = chart_store.runs_per_hour(conn, "export", "UTC", charts.HOURS)
    assert utc_since.minute == 0
    utc_counts = charts.bucket_counts(utc_rows, utc_since, charts.HOURS)
    assert [sum(c.values()) for c in utc_counts if c] == [2]
    empty_since, empty = chart_store.runs_per_hour(conn, "idle", "UTC", charts.HOURS)
    assert empty == [] and empty_since.minute == 0


def test_recent_outcomes_are_each_jobs_newest_in_one_statement(conn: db.Conn) -> None:
    for minutes in range(30):
        insert_run(conn, "a", minutes * 60)
    insert_run(conn, "b", 0, "failed")
    found = chart_store.recent_outcomes(conn, ["a", "b", "none"], 20)
    assert sorted(found) == ["a", "b"]
    assert len(found["a"]) == 20 and [r["status"] for r in found["b"]] == ["failed"]
    newest = [r["started_at"] for r in found["a"]]
    assert newest == sorted(newest, reverse=True)
    assert sparklines.sparklines(conn, ["a", "b"])["b"].marks[0].status == "failed"


def seed_month(conn: db.Conn, jobs: int = 20, runs: int = 60_000) -> None:
    """`runs` runs of `jobs` jobs interleaved over 30 days, as the statistics see them; one
    job, bulk_3, stopped 20 days ago: the trap for a plan that walks (started_at) back."""
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at)"
        " SELECT 'bulk_' || j, 'jobs', 'every 1h', now() FROM generate_series(1, %s) AS j",
        (jobs,),
    )
    conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at, duration_ms)"
        " SELECT 'bulk_' || (1 + i %% %(jobs)s), 'schedule',"
        "   (ARRAY['success','success','partial','failed'])[1 + i %% 4], 'peer', 1,"
        "   now() - make_interval(secs => i * 43.2), 1000"
        "   FROM generate_series(1, %(runs)s) AS i",
        {"jobs": jobs, "runs": runs},
    )
    conn.execute(
        "DELETE FROM worker_job_runs"
        " WHERE job = 'bulk_3' AND started_at > now() - interval '20 days'"
    )
    conn.execute("ANALYZE worker_job_runs")
    conn.execute("ANALYZE worker_jobs")


def plan_of(conn: db.Conn, name: str, params: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + db.query(name), params).fetchone()
    assert row is not None
    return dict(row["QUERY PLAN"][0])


def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(below for child in node.get("Plans", []) for below in nodes(child))]


@pytest.mark.parametrize(
    ("name", "params", "most_rows"),
    [
        ("charts.last_runs", {"job": "bulk_3", "limit": charts.LAST_RUNS}, charts.LAST_RUNS),
        ("charts.last_runs", {"job": "bulk_4", "limit": charts.LAST_RUNS}, charts.LAST_RUNS),
        # 7 of the 30 days of one job of 20: about 700 of the 60,000 runs.
        ("charts.runs_per_hour", {"job": "bulk_4", "zone": "UTC", "hours": charts.HOURS}, 800),
        ("charts.runs_per_hour", {"job": "bulk_3", "zone": "UTC", "hours": charts.HOURS}, 0),
        (
            "charts.recent_outcomes",
            {"jobs": [f"bulk_{j}" for j in range(1, 21)], "per_job": sparklines.SPARK_RUNS},
            20 * sparklines.SPARK_RUNS,
        ),
    ],
)
def test_chart_reads_walk_the_index_and_only_their_range(
    conn: db.Conn, name: str, params: dict[str, Any], most_rows: int
) -> None:
    seed_month(conn)
    plan = plan_of(conn, name, params)
    walked = nodes(plan["Plan"])
    assert not [n for n in walked if n["Node Type"] == "Seq Scan"], json.dumps(plan)
    scans = [n for n in walked if n.get("Relation Name") == "worker_job_runs"]
    assert scans and {n["Node Type"] for n in scans} <= RANGE_SCANS, json.dumps(plan)
    indexes = {n["Index Name"] for n in walked if "Index Name" in n}
    assert indexes and indexes <= JOB_INDEXES, json.dumps(plan)
    read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
    assert read <= most_rows, json.dumps(plan)


def test_an_hours_column_links_to_that_hours_runs_of_the_job() -> None:
    from urllib.parse import parse_qs, urlsplit

    since = datetime(2026, 11, 25, 18, 30, tzinfo=UTC)  # Kolkata's midnight: +05:30
    rows = [hour_row(since, 10, "failed", 2)]
    chart = charts.hourly_chart(rows, since, "Asia/Kolkata", job="export")
    link = urlsplit(chart.columns[10].href or "")
    assert link.path == "/runs"
    query = {name: values[0] for name, values in parse_qs(link.query).items()}
    assert query == {
        "job": "export",
        "since": "2026-11-26T10:00+05:30",
        "until": "2026-11-26T11:00+05:30",
    }
    start = datetime.fromisoformat(query["since"])
    assert start == since + timedelta(hours=10)  # the very hour the column counts
    assert datetime.fromisoformat(query["until"]) - start == timedelta(hours=1)
    assert chart.columns[9].href is None  # no runs in that hour: nothing to link
    assert charts.hourly_chart(rows, since, "Asia/Kolkata").columns[10].href is None
