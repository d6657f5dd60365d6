"""The settings vocabulary shared by the backends, and SQLite's settings.

Postgres's settings are tested through their environment in
tests/postgres/test_settings.py, SQLite's factory errors in
tests/sqlite/test_errors.py; here are the shared parsers, the reader,
:class:`SQLiteSettings` itself, and that moved names are still importable.
"""

from __future__ import annotations

import math

import pytest
from eventsourcing.utils import Environment

from asyncsourcing.settings import EnvReader, parse_bool, parse_choice, parse_number
from asyncsourcing.sqlite import SQLiteDatastore, SQLiteFactory, SQLiteSettings
from asyncsourcing.sqlite.datastore import DEFAULT_LOCK_TIMEOUT, DEFAULT_POLL_INTERVAL
from asyncsourcing.sqlite.settings import SQLiteSettingsError

# --- the shared parsers ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("YES", True), ("0", False), ("off", False)]
)
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


def test_parse_bool_refuses_other_words() -> None:
    with pytest.raises(ValueError, match="maybe"):
        parse_bool("maybe")


def test_parse_number_checks_kind_finiteness_and_bounds() -> None:
    assert parse_number("7", int, minimum=1) == 7
    assert parse_number("0", float, minimum=0) == 0.0
    with pytest.raises(ValueError, match=r"^an integer is expected, got '1\.5'$"):
        parse_number("1.5", int)
    for text in ("nan", "inf", "-inf", "soon"):
        with pytest.raises(ValueError, match=r"^a number is expected"):
            parse_number(text, float)
    with pytest.raises(ValueError, match=r"^must be greater than 0, got '0'$"):
        parse_number("0", float, minimum=0, exclusive=True)
    with pytest.raises(ValueError, match=r"^must be greater than 0, got '-0.0'$"):
        parse_number("-0.0", float, minimum=0, exclusive=True)
    with pytest.raises(ValueError, match=r"^must be at least 1, got '0'$"):
        parse_number("0", int, minimum=1)
    with pytest.raises(ValueError, match=r"^must be at most 9, got '10'$"):
        parse_number("10", int, maximum=9)


def test_parse_choice_ignores_case() -> None:
    assert parse_choice("TEXT", ("uuid", "text")) == "text"
    with pytest.raises(ValueError, match=r"^expected one of uuid, text, got 'int'$"):
        parse_choice("int", ("uuid", "text"))


# --- the reader ------------------------------------------------------------


def test_prefixed_variable_wins_even_when_empty() -> None:
    reader = EnvReader(Environment("app", {"APP_KEY": "", "KEY": "plain"}))
    assert reader.keys("KEY") == ["APP_KEY", "KEY"]
    assert reader.key_of("KEY") == "APP_KEY"
    # Empty means unset: the default applies, not the unprefixed value.
    assert reader.number("KEY", int, 3) == 3
    assert reader.problems == []


def test_values_are_stripped_and_problems_name_the_variable_set() -> None:
    reader = EnvReader(Environment("app", {"KEY": " 12 ", "APP_FLAG": "maybe"}))
    assert reader.get("KEY") == "12"
    assert reader.number("KEY", int, 0, maximum=10) == 0
    assert reader.boolean("FLAG", default=True) is True
    assert reader.choice("MISSING", ("a", "b")) is None
    assert reader.problems == [
        ("KEY", "must be at most 10, got '12'"),
        ("APP_FLAG", "invalid truth value 'maybe' (got 'maybe')"),
    ]


def test_require_falls_back_then_records_the_missing_key() -> None:
    reader = EnvReader({"SECRET": " pw ", "BLANK": " "})
    assert reader.require("SECRET", secret=True) == " pw "
    assert reader.require("BLANK", "from url") == "from url"
    assert reader.require("BLANK") == ""
    assert reader.require("ABSENT") == ""
    assert reader.missing == ["BLANK", "ABSENT"]


# --- SQLite's settings -----------------------------------------------------


def test_sqlite_defaults() -> None:
    settings = SQLiteSettings.from_env({"SQLITE_DBNAME": "app.sqlite"})
    assert settings == SQLiteSettings(db_name="app.sqlite")
    assert settings.lock_timeout == DEFAULT_LOCK_TIMEOUT
    assert settings.poll_interval == DEFAULT_POLL_INTERVAL
    assert settings.originator_id_type == "uuid"
    assert settings.create_tables is True
    assert settings.tracking_table is None


def test_sqlite_values_are_parsed_prefixed_first() -> None:
    env = Environment(
        "orders",
        {
            "ORDERS_SQLITE_DBNAME": "orders.sqlite",
            "SQLITE_DBNAME": "other.sqlite",
            "SQLITE_LOCK_TIMEOUT": " 0 ",
            "ORDERS_SQLITE_POLL_INTERVAL": "0.5",
            "ORIGINATOR_ID_TYPE": "TEXT",
            "CREATE_TABLE": "no",
            "SQLITE_TRACKING_TABLE": " views_tracking ",
        },
    )
    assert SQLiteSettings.from_env(env) == SQLiteSettings(
        db_name="orders.sqlite",
        lock_timeout=0.0,
        poll_interval=0.5,
        originator_id_type="text",
        create_tables=False,
        tracking_table="views_tracking",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {},
            "SQLite database name not found in environment with keys: "
            "APP_SQLITE_DBNAME, SQLITE_DBNAME",
        ),
        (
            {"SQLITE_DBNAME": "x", "SINGLE_ROW_TRACKING": "no"},
            "APP_SINGLE_ROW_TRACKING or SINGLE_ROW_TRACKING is false, but only "
            "single-row tracking (eventsourcing 9.5's layout) is supported",
        ),
        (
            {"SQLITE_DBNAME": "x", "ORIGINATOR_ID_TYPE": "INT"},
            "Invalid APP_ORIGINATOR_ID_TYPE or ORIGINATOR_ID_TYPE 'int': "
            "expected 'uuid' or 'text'",
        ),
        (
            {"SQLITE_DBNAME": "x", "APP_SQLITE_LOCK_TIMEOUT": "-1"},
            "Invalid APP_SQLITE_LOCK_TIMEOUT or SQLITE_LOCK_TIMEOUT '-1': "
            "expected a number of seconds >= 0",
        ),
        (
            {"SQLITE_DBNAME": "x", "SQLITE_POLL_INTERVAL": "0"},
            "Invalid APP_SQLITE_POLL_INTERVAL or SQLITE_POLL_INTERVAL '0': "
            "expected a number of seconds > 0",
        ),
        (
            {"SQLITE_DBNAME": "x", "CREATE_TABLE": "maybe"},
            "Invalid APP_CREATE_TABLE or CREATE_TABLE 'maybe': expected true or false",
        ),
        (
            {"SQLITE_DBNAME": "x", "SQLITE_TRACKING_TABLE": "1bad"},
            "Invalid APP_SQLITE_TRACKING_TABLE or SQLITE_TRACKING_TABLE: Invalid "
            "SQLite table name '1bad': use letters, digits and underscores, not "
            "starting with a digit",
        ),
    ],
)
def test_sqlite_errors_name_every_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SQLiteSettingsError) as raised:
        SQLiteSettings.from_env(Environment("app", env))
    assert str(raised.value) == message


def test_sqlite_first_problem_is_raised_alone() -> None:
    env = {"SQLITE_LOCK_TIMEOUT": "x", "SQLITE_POLL_INTERVAL": "y"}
    with pytest.raises(SQLiteSettingsError, match="SQLITE_DBNAME") as raised:
        SQLiteSettings.from_env(env)
    assert "SQLITE_LOCK_TIMEOUT" not in str(raised.value)


def test_sqlite_settings_are_validated_on_construction() -> None:
    with pytest.raises(SQLiteSettingsError) as raised:
        SQLiteSettings(
            db_name="",
            lock_timeout=-1,
            poll_interval=math.inf,
            originator_id_type="int",  # type: ignore[arg-type]
            tracking_table="sqlite_x",
        )
    lines = str(raised.value).splitlines()
    assert [line.split("'")[1] for line in lines] == [
        "db_name",
        "lock_timeout",
        "poll_interval",
        "originator_id_type",
        "tracking_table",
    ]


async def test_sqlite_datastore_and_factory_follow_the_settings() -> None:
    settings = SQLiteSettings(
        db_name=":memory:", lock_timeout=2, poll_interval=3, originator_id_type="text"
    )
    async with settings.create_datastore() as datastore:
        assert isinstance(datastore, SQLiteDatastore)
        assert (datastore.db_name, datastore.lock_timeout) == (":memory:", 2)
        assert (datastore.poll_interval, datastore.originator_id_type) == (3, "text")
    env = {"SQLITE_DBNAME": ":memory:", "CREATE_TABLE": "false"}
    async with SQLiteFactory(env) as factory:
        assert factory.settings == SQLiteSettings.from_env(env)
        assert factory.env_create_table() is False


# --- moved names stay importable -------------------------------------------


def test_moved_names_are_importable_where_they_were() -> None:
    from asyncsourcing import sqlite
    from asyncsourcing.postgres import settings as postgres_settings
    from asyncsourcing.postgres import urls
    from asyncsourcing.sqlite import factory
    from asyncsourcing.testing import pgbinaries, pgserver

    assert factory.SQLiteSettingsError is sqlite.SQLiteSettingsError
    assert sqlite.SQLiteSettingsError is SQLiteSettingsError
    assert postgres_settings.URL_KEYS is urls.URL_KEYS
    assert postgres_settings.SSLMode is urls.SSLMode
    for name in ("PostgresBinaries", "find_postgres_binaries", "DEBIAN_BIN_GLOB"):
        assert getattr(pgserver, name) is getattr(pgbinaries, name)
        assert name in pgserver.__all__
