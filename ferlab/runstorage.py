"""Dagster's run, event and schedule storage. One machine (the default): SQLite files under
DAGSTER_HOME, nothing to start. Several machines (a daemon, webservers, run workers, dask workers
on other hosts): one PostgreSQL database they all reach, when `$FERLAB_DAGSTER_POSTGRES_URL` is set
(`postgresql+psycopg2://user:password@host:5432/database`; dagster-postgres).

The driver is part of the URL: dagster-postgres is written for psycopg2, while SQLAlchemy 2.1 gives
a plain `postgresql://` URL psycopg 3, on which Dagster's event log fails (`NOTIFY ... $1`). A plain
URL is refused with that said, rather than failing in the middle of a run.

ferlab's dagster.yaml then names the variable, not its value (`postgres_url: {env: ...}`): the
password is read from the environment by each process that opens the instance, and is never
written to a file or a log (messages show the URL with `***` for it)."""

from __future__ import annotations

import logging
import os

from warehouse.errors import ConfigError

logger = logging.getLogger(__name__)

POSTGRES_ENV = "FERLAB_DAGSTER_POSTGRES_URL"
# Appended to ferlab's dagster.yaml when POSTGRES_ENV is set: runs, event logs and schedules in
# PostgreSQL (dagster-postgres creates its tables on first use).
POSTGRES_STORAGE_YAML = f"""\
storage:
  postgres:
    postgres_url:
      env: {POSTGRES_ENV}
"""
CONNECT_TIMEOUT_S = 5
DRIVER = "postgresql+psycopg2"  # the URL's scheme: dagster-postgres speaks psycopg2 (see above)


def postgres_url() -> str | None:
    """`$FERLAB_DAGSTER_POSTGRES_URL`, or None when unset or empty (SQLite, the default)."""
    return os.environ.get(POSTGRES_ENV, "").strip() or None


def redact(url: str) -> str:
    """The URL with its password as `***` (for messages); `<not a URL>` when it does not parse."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<not a URL>"


def check_postgres(url: str, dagster_home: os.PathLike | str, timeout_s: int = CONNECT_TIMEOUT_S) -> None:
    """Connect once to the database `url` names, through SQLAlchemy and psycopg2 as dagster-postgres
    will.

    Raises ConfigError (one line: which server, why, what to do; the password never in it) when
    the URL does not parse, names another driver, or the server does not answer, refuses the
    login or lacks the database."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    keep_sqlite = f"or unset {POSTGRES_ENV} to keep Dagster's runs in SQLite under {dagster_home}"
    form = f"{DRIVER}://user:password@host:5432/database"
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a port that is not a number raises here
    except (ArgumentError, ValueError):
        raise ConfigError(f"${POSTGRES_ENV} is not a URL: give {form}, {keep_sqlite}") from None
    where = redact(url)
    if parsed.drivername != DRIVER:
        raise ConfigError(
            f"${POSTGRES_ENV} ({where}) must name the driver dagster-postgres speaks: give {form} "
            f"(a plain postgresql:// takes psycopg 3 under SQLAlchemy 2.1), {keep_sqlite}"
        )
    engine = sqlalchemy.create_engine(parsed, connect_args={"connect_timeout": timeout_s})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        reason = " ".join(str(cause).split()) or type(cause).__name__
        for secret in (parsed.password, url):
            if secret:
                reason = reason.replace(str(secret), "***")
        raise ConfigError(
            f"Dagster's run storage ${POSTGRES_ENV} = {where} does not answer ({reason}): start the "
            f"server, fix the URL or create the database (`createdb`), {keep_sqlite}"
        ) from None
    finally:
        engine.dispose()
    logger.info("Dagster's runs, events and schedules are stored in PostgreSQL at %s", where)
