"""The handler catalogue (worker.handlers): read in a child interpreter, listed in the
`GET /api/handlers` shape, kwargs checked against the signatures' text; the date and time
forms (worker.timeforms); a handler run by `python -m worker.call --handler`. No PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import typing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import pytest

from worker import timeforms
from worker.handlers import (
    MODULE_ENTRY,
    Catalogue,
    Handler,
    KwargsError,
    Parameter,
    load_catalogue,
    split_entries,
)
from worker.inspect_handlers import revive
from worker.settings import ConfigError, from_env
from worker.settings.readers import _HANDLER_MODULE
from worker.signatures import ANY, Kind, annotation_kind, render

NOW = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)  # a Friday, 12:30 UTC
PACKAGE = "demo_handlers_pkg"  # the app's package in the fixture, on the child's path only

SEED_TEMPLATE = """
from datetime import datetime

TASK_INFO = {"name": "Sync accounts", "description": "Pull accounts from the CRM."}
task_log = print  # the worker later provides task.log
print("sync_accounts imported")  # import noise: must not disturb the child's answers

async def run(
    days: int = 7,
    target: str = "all",
    start_date: datetime | None = None,
    options: dict | None = None,
) -> dict:
    task_log(f"syncing {days} days of {target}")
    return {"synced": 3, "start_date": type(start_date).__name__, "days": days}
"""

TASKS = '''
"""The app's tasks."""

from __future__ import annotations

from datetime import date, timedelta
from os.path import join  # imported, not defined here: not a handler

def sync_all(limit: int, window: timedelta = timedelta(hours=1), **extra: str) -> dict:
    """Sync every account.

    The second paragraph is not the description.
    """
    return {"limit": limit}

def report(day: date, formats: list[str] | None = None, *, verbose: bool = False) -> None:
    pass

def _helper() -> None:
    pass
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- the annotation grammar and the rendering of annotations -----------------------------


@pytest.mark.parametrize(
    ("text", "types", "nullable"),
    [
        ("int", {"int"}, False),
        ("datetime | None", {"datetime"}, True),
        ("None | datetime.datetime", {"datetime"}, True),
        ("Optional[int]", {"int"}, True),
        ("typing.Optional[list[str]]", {"list"}, True),
        ("Union[int, str, None]", {"int", "str"}, True),
        ("List[int]", {"list"}, False),
        ("typing.Dict[str, list[int | None]]", {"dict"}, False),
        ("dict[str, int] | list[int]", {"dict", "list"}, False),
        ("'timedelta'", {"timedelta"}, False),
        ("datetime.date", {"date"}, False),
        ("bool", {"bool"}, False),
    ],
)
def test_annotation_kinds(text: str, types: set[str], nullable: bool) -> None:
    assert annotation_kind(text) == Kind(frozenset(types), nullable)


@pytest.mark.parametrize(
    "text", [None, "", "Any", "typing.Any", "Config", "int | Config", "Literal['a', 'b']", "list["]
)
def test_what_the_grammar_does_not_know_accepts_anything(text: str | None) -> None:
    assert annotation_kind(text) == ANY
    assert ANY.problem(None) is None and ANY.problem({"x": 1}) is None


def test_date_like_only_when_unambiguous() -> None:
    assert annotation_kind("datetime | None").date_like == "datetime"
    assert annotation_kind("timedelta").date_like == "timedelta"
    assert annotation_kind("datetime | str").date_like is None
    assert annotation_kind("date | datetime").date_like is None


class Config:
    pass


@pytest.mark.parametrize(
    ("annotation", "text"),
    [
        (int, "int"),
        (datetime | None, "datetime | None"),
        (Optional[int], "Optional[int]"),  # noqa: UP045 (the typing form is the point)
        (typing.Union[int, str], "Union[int, str]"),  # noqa: UP007
        (list[str], "list[str]"),
        (typing.Dict[str, int], "Dict[str, int]"),  # noqa: UP006
        (dict[str, list[int]] | None, "dict[str, list[int]] | None"),
        (typing.Any, "Any"),
        (typing.Literal["a", "b"], "Literal['a', 'b']"),
        (Config, "Config"),
        ("datetime | None", "datetime | None"),
    ],
)
def test_annotations_render_as_written(annotation: Any, text: str) -> None:
    assert render(annotation) == text


# --- the date and time forms at a fixed now ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("now", "2026-05-01T12:30:00+00:00"),
        ("NOW", "2026-05-01T12:30:00+00:00"),
        ("today", "2026-05-01T00:00:00+00:00"),
        ("now-7d", "2026-04-24T12:30:00+00:00"),
        ("now + 30m", "2026-05-01T13:00:00+00:00"),
        ("now-90s", "2026-05-01T12:28:30+00:00"),
        ("today+1d", "2026-05-02T00:00:00+00:00"),
        ("today-2h", "2026-04-30T22:00:00+00:00"),
        ("2026-01-31T08:00:00+08:00", "2026-01-31T08:00:00+08:00"),
        ("2026-01-31T08:00:00Z", "2026-01-31T08:00:00+00:00"),
        ("2026-01-31T08:00:00", "2026-01-31T08:00:00+00:00"),  # naive: UTC
        ("2026-01-31", "2026-01-31T00:00:00+00:00"),
    ],
)
def test_datetime_forms(value: str, expected: str) -> None:
    assert timeforms.resolve("datetime", value, NOW) == expected


def test_today_is_midnight_in_the_zone_given() -> None:
    assert timeforms.resolve("datetime", "today", NOW, "Asia/Shanghai") == (
        "2026-05-01T00:00:00+08:00"
    )
    assert timeforms.resolve("datetime", "now", NOW, "Asia/Shanghai") == (
        "2026-05-01T20:30:00+08:00"
    )
    naive_now = datetime(2026, 5, 1, 12, 30)  # taken as UTC
    assert timeforms.resolve("datetime", "now", naive_now) == "2026-05-01T12:30:00+00:00"


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("date", "today", "2026-05-01"),
        ("date", "today-1d", "2026-04-30"),
        ("date", "today+10d", "2026-05-11"),
        ("date", "2026-02-28", "2026-02-28"),
        ("timedelta", "30m", 1800),
        ("timedelta", "2h", 7200),
        ("timedelta", "7d", 604800),
        ("timedelta", "90s", 90),
        ("timedelta", 45, 45),
        ("timedelta", 1.5, 1.5),
        ("timedelta", 60.0, 60),
    ],
)
def test_date_and_timedelta_forms(kind: str, value: Any, expected: Any) -> None:
    assert timeforms.resolve(kind, value, NOW) == expected


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("datetime", "yesterday"),
        ("datetime", "now-7"),
        ("datetime", "now*2"),
        ("datetime", "__import__('os')"),
        ("datetime", "now-7y"),
        ("datetime", 1714560000),
        ("date", "now"),
        ("date", "today-2h"),
        ("date", "2026-05-01T00:00"),
        ("timedelta", "1h30m"),
        ("timedelta", "-5m"),
        ("timedelta", True),
        ("timedelta", float("inf")),
        ("timedelta", "PT30M"),
    ],
)
def test_unknown_forms_are_refused(kind: str, value: Any) -> None:
    with pytest.raises(ValueError, match="expected"):
        timeforms.resolve(kind, value, NOW)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An app's directory: `scripts/` (seed 003's), and a package with two public functions."""
    root = tmp_path_factory.mktemp("app")
    write(root / "scripts" / "sync_accounts.py", SEED_TEMPLATE)
    write(root / "scripts" / "broken.py", "import no_such_module\n\ndef run():\n    pass\n")
    write(root / "scripts" / "helpers.py", "def shared():\n    return 1\n")  # no `run`
    write(root / "scripts" / "_private.py", "def run():\n    pass\n")
    write(
        root / "scripts" / "plain.py",
        '"""Prune the cache."""\n\ndef run(keep, *args, **kwargs):\n    return None\n',
    )
    write(root / PACKAGE / "__init__.py", "")
    write(root / PACKAGE / "tasks.py", TASKS)
    return root


@pytest.fixture(scope="module")
def catalogue(app: Path) -> Catalogue:
    return load_catalogue(f"scripts, {PACKAGE}.tasks", app, timeout_s=10)


def test_the_catalogue_lists_scripts_and_module_functions(catalogue: Catalogue) -> None:
    assert [h.name for h in catalogue] == [
        "scripts:broken",
        "scripts:plain",
        "scripts:sync_accounts",
        f"{PACKAGE}.tasks:sync_all",
        f"{PACKAGE}.tasks:report",
    ]
    listed = {entry["name"]: entry for entry in catalogue.listed()}
    assert listed["scripts:sync_accounts"] == {
        "name": "scripts:sync_accounts",
        "title": "Sync accounts",
        "description": "Pull accounts from the CRM.",
        "parameters": [
            {"name": "days", "annotation": "int", "default": 7, "required": False},
            {"name": "target", "annotation": "str", "default": "all", "required": False},
            {
                "name": "start_date",
                "annotation": "datetime | None",
                "default": None,
                "required": False,
            },
            {"name": "options", "annotation": "dict | None", "default": None, "required": False},
        ],
        "extra_kwargs": False,
        "error": None,
    }
    assert json.loads(json.dumps(catalogue.listed())) == catalogue.listed()


def test_titles_and_descriptions_fall_back_to_names_and_docstrings(catalogue: Catalogue) -> None:
    listed = {entry["name"]: entry for entry in catalogue.listed()}
    plain = listed["scripts:plain"]
    assert (plain["title"], plain["description"]) == ("plain", "Prune the cache.")
    assert plain["parameters"] == [
        {"name": "keep", "annotation": None, "default": None, "required": True}
    ]
    assert plain["extra_kwargs"] is True
    sync_all = listed[f"{PACKAGE}.tasks:sync_all"]
    assert (sync_all["title"], sync_all["description"]) == ("sync_all", "Sync every account.")
    assert sync_all["parameters"] == [
        {"name": "limit", "annotation": "int", "default": None, "required": True},
        {"name": "window", "annotation": "timedelta", "default": 3600, "required": False},
    ]
    report = listed[f"{PACKAGE}.tasks:report"]
    assert [(p["name"], p["annotation"]) for p in report["parameters"]] == [
        ("day", "date"),
        ("formats", "list[str] | None"),
        ("verbose", "bool"),
    ]


def test_an_import_error_is_on_its_handler_only(catalogue: Catalogue) -> None:
    broken = catalogue.get("scripts:broken")
    assert broken is not None
    assert broken.error == "ModuleNotFoundError: No module named 'no_such_module'"
    assert [h.name for h in catalogue if h.error] == ["scripts:broken"]
    with pytest.raises(KwargsError) as raised:
        catalogue.validate("scripts:broken", {})
    assert raised.value.parameter == "handler" and "no_such_module" in raised.value.message


def test_where_each_handler_lives(app: Path, catalogue: Catalogue) -> None:
    script = catalogue.get("scripts:sync_accounts")
    function = catalogue.get(f"{PACKAGE}.tasks:sync_all")
    assert script is not None and function is not None
    assert script.target == f"{(app / 'scripts' / 'sync_accounts.py').resolve()}:run"
    assert (function.module, function.function) == (f"{PACKAGE}.tasks", "sync_all")
    assert function.target == f"{PACKAGE}.tasks:sync_all"


def test_the_daemon_never_imports_a_handler(catalogue: Catalogue) -> None:
    assert len(catalogue) == 5
    imported = [name for name in sys.modules if PACKAGE in name or "worker_handler_" in name]
    assert imported == []


def test_module_entries_missing_functions_and_unknown_modules(app: Path) -> None:
    spec = f"{PACKAGE}.tasks:report, {PACKAGE}.tasks:nothing, no_such_app.tasks, not a name"
    catalogue = load_catalogue(spec, app, timeout_s=10)
    errors = {h.name: h.error for h in catalogue}
    assert errors == {
        f"{PACKAGE}.tasks:report": None,
        f"{PACKAGE}.tasks:nothing": f"{PACKAGE}.tasks has no attribute nothing",
        "no_such_app.tasks": "ModuleNotFoundError: No module named 'no_such_app'",
        "not a name": "neither a directory nor a module name",
    }


def test_a_hanging_import_times_out_and_the_rest_still_lists(tmp_path: Path) -> None:
    write(tmp_path / "jobs" / "a_ok.py", "def run():\n    pass\n")
    write(tmp_path / "jobs" / "b_hangs.py", "import time\ntime.sleep(60)\n\ndef run():\n    pass\n")
    write(tmp_path / "jobs" / "c_dies.py", "import os\nos._exit(3)\n")
    write(tmp_path / "jobs" / "d_ok.py", "def run(n: int = 1):\n    pass\n")
    started = time.monotonic()
    catalogue = load_catalogue("jobs", tmp_path, timeout_s=0.5)
    assert time.monotonic() - started < 5
    errors = {h.name: h.error for h in catalogue}
    assert errors == {
        "scripts:a_ok": None,
        "scripts:b_hangs": "timed out after 0.5 s while importing",
        "scripts:c_dies": "the inspecting interpreter exited with code 3 while importing",
        "scripts:d_ok": None,
    }


def test_one_script_name_in_two_directories_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "one" / "sync.py", "def run():\n    pass\n")
    write(tmp_path / "two" / "sync.py", "def run():\n    pass\n")
    [handler] = load_catalogue("one,two", tmp_path, timeout_s=10)
    assert handler.error is not None and "defined twice" in handler.error
    assert str(tmp_path / "one" / "sync.py") in handler.error


def test_no_entries_no_child_no_handlers(tmp_path: Path) -> None:
    assert load_catalogue("", tmp_path).listed() == []
    assert split_entries(" scripts, ,app.tasks,scripts ") == ["scripts", "app.tasks"]


# --- the rules of kwargs, on a catalogue built in the test: no child ---------------------


RULES = Catalogue(
    [
        Handler(
            "app.tasks:sync",
            "sync",
            parameters=(
                Parameter("days", "int", kind=annotation_kind("int")),
                Parameter("ratio", "float", 0.5, annotation_kind("float")),
                Parameter("target", "str", "all", annotation_kind("str")),
                Parameter("dry", "bool", False, annotation_kind("bool")),
                Parameter("ids", "list[int]", None, annotation_kind("list[int]")),
                Parameter("options", "Optional[dict]", None, annotation_kind("Optional[dict]")),
                Parameter("since", "datetime | None", None, annotation_kind("datetime | None")),
                Parameter("day", "date", "today", annotation_kind("date")),
                Parameter("window", "timedelta", 60, annotation_kind("timedelta")),
                Parameter("anything", None, None),
            ),
            module="app.tasks",
            function="sync",
        ),
        Handler("app.tasks:free", "free", extra_kwargs=True, module="app.tasks", function="free"),
    ]
)


@pytest.mark.parametrize(
    ("handler", "kwargs", "culprit", "words"),
    [
        ("app.tasks:nothing", {"days": 1}, "handler", "no handler named 'app.tasks:nothing'"),
        ("app.tasks:sync", [1], "kwargs", "must be a JSON object"),
        ("app.tasks:sync", {"days": 1, "dayz": 2}, "dayz", "has no parameter 'dayz'"),
        ("app.tasks:sync", {"target": "x"}, "days", "is required"),
        ("app.tasks:sync", {"days": "7"}, "days", "expected int, got a string"),
        ("app.tasks:sync", {"days": True}, "days", "expected int, got a boolean"),
        ("app.tasks:sync", {"days": 7.5}, "days", "expected int, got a number"),
        ("app.tasks:sync", {"days": None}, "days", "expected int, got null"),
        ("app.tasks:sync", {"days": 1, "ratio": "0.5"}, "ratio", "expected float"),
        ("app.tasks:sync", {"days": 1, "ratio": False}, "ratio", "got a boolean"),
        ("app.tasks:sync", {"days": 1, "target": 3}, "target", "expected str, got a number"),
        ("app.tasks:sync", {"days": 1, "dry": "yes"}, "dry", "expected bool, got a string"),
        ("app.tasks:sync", {"days": 1, "ids": {"a": 1}}, "ids", "expected list[int], got an"),
        ("app.tasks:sync", {"days": 1, "options": [1]}, "options", "expected Optional[dict]"),
        ("app.tasks:sync", {"days": 1, "since": "yesterday"}, "since", "expected datetime"),
        ("app.tasks:sync", {"days": 1, "since": 5}, "since", "got a number"),
        ("app.tasks:sync", {"days": 1, "day": "now"}, "day", "expected date"),
        ("app.tasks:sync", {"days": 1, "day": "2026-02-30"}, "day", "expected date"),
        ("app.tasks:sync", {"days": 1, "window": "soon"}, "window", "expected timedelta"),
        ("app.tasks:sync", {"days": 1, "window": None}, "window", "got null"),
    ],
)
def test_kwargs_that_do_not_fit_name_the_parameter(
    handler: str, kwargs: Any, culprit: str, words: str
) -> None:
    with pytest.raises(KwargsError) as raised:
        RULES.validate(handler, kwargs)
    assert raised.value.parameter == culprit
    assert words in raised.value.message
    assert str(raised.value).startswith(f"{culprit}: ")


def test_kwargs_that_fit_are_stored_as_given() -> None:
    kwargs = {
        "days": 7,
        "ratio": 2,
        "target": "eu",
        "dry": True,
        "ids": [1, 2],
        "options": None,
        "since": "now-7d",
        "day": "today+1d",
        "window": "30m",
        "anything": {"x": [1, None]},
    }
    assert RULES.validate("app.tasks:sync", kwargs) == kwargs
    assert RULES.validate("app.tasks:sync", {"days": 1, "since": "2026-05-01T08:00:00+08:00"})
    assert RULES.validate("app.tasks:free", {"whatever": 1, "names": ["a"]}) == {
        "whatever": 1,
        "names": ["a"],
    }


def test_resolve_turns_date_forms_into_what_the_child_receives() -> None:
    kwargs = {"days": 7, "since": "now-7d", "day": "today+1d", "window": "30m", "target": "now"}
    assert RULES.resolve("app.tasks:sync", kwargs, NOW) == {
        "days": 7,
        "since": "2026-04-24T12:30:00+00:00",
        "day": "2026-05-02",
        "window": 1800,
        "target": "now",  # a str parameter: never a date form
    }
    at_night = datetime(2026, 5, 1, 20, 0, tzinfo=UTC)  # already May 2nd in Shanghai
    resolved = RULES.resolve(
        "app.tasks:sync", {"days": 1, "day": "today"}, at_night, "Asia/Shanghai"
    )
    assert resolved["day"] == "2026-05-02"


# --- in the child: what it receives, back into objects ------------------------------------


def test_revive_turns_what_the_child_receives_into_objects() -> None:
    def handler(
        since: datetime | None = None, day: date | None = None, window: timedelta = timedelta(0)
    ) -> None:
        pass

    sent = {"since": "2026-04-24T12:30:00+00:00", "day": "2026-05-02", "window": 1800}
    assert revive(handler, {**sent, "other": "x"}) == {
        "since": datetime(2026, 4, 24, 12, 30, tzinfo=UTC),
        "day": date(2026, 5, 2),
        "window": timedelta(minutes=30),
        "other": "x",
    }
    assert revive(handler, {"since": None}) == {"since": None}
    with pytest.raises(ValueError, match="since"):
        revive(handler, {"since": "now-7d"})  # relative forms are resolved before the child


# --- running a handler: `python -m worker.call --handler` --------------------------------


def call_handler(app: Path, target: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    result = app / "result.json"
    env = {**os.environ, "WORKER_CALL_RESULT": str(result)}
    done = subprocess.run(
        [sys.executable, "-m", "worker.call", "--handler", target],
        cwd=app,
        env=env,
        input=json.dumps(kwargs),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(result.read_text())
    return answer


def test_a_script_handler_runs_with_its_kwargs_resolved(app: Path, catalogue: Catalogue) -> None:
    handler = catalogue.get("scripts:sync_accounts")
    assert handler is not None
    kwargs = catalogue.resolve(handler.name, {"days": 3, "start_date": "now-1d"}, NOW)
    answer = call_handler(app, handler.target, kwargs)
    assert answer == {"result": {"synced": 3, "start_date": "datetime", "days": 3}}


def test_a_module_handler_runs_by_its_target(app: Path, catalogue: Catalogue) -> None:
    handler = catalogue.get(f"{PACKAGE}.tasks:sync_all")
    assert handler is not None
    answer = call_handler(app, handler.target, catalogue.resolve(handler.name, {"limit": 5}, NOW))
    assert answer == {"result": {"limit": 5}}


# --- the setting -------------------------------------------------------------------------


def test_worker_handlers_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"DATABASE_URL": "postgresql://db/app"}
    assert from_env(env).handlers == ()
    (tmp_path / "scripts").mkdir()
    monkeypatch.chdir(tmp_path)
    value = "scripts, app.tasks, app.jobs:sync_all, scripts"
    parsed = from_env({**env, "WORKER_HANDLERS": value}).handlers
    assert parsed == ("scripts", "app.tasks", "app.jobs:sync_all")
    for bad in ("./missing", "app.tasks:sync:all", "app-tasks", "app.tasks:"):
        with pytest.raises(ConfigError, match=r"WORKER_HANDLERS: .* neither an existing"):
            from_env({**env, "WORKER_HANDLERS": f"scripts,{bad}"})


def test_the_module_entry_pattern_is_the_settings_one() -> None:
    assert MODULE_ENTRY.pattern == _HANDLER_MODULE.pattern
