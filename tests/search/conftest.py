"""A fresh PostgreSQL database per test, from the server that ``.ci/postgres.sh`` starts.

``PROTEGE_TEST_POSTGRES`` names the server (a URL of any database on it). Without it
the PostgreSQL tests are skipped, unless ``PROTEGE_REQUIRE_POSTGRES=1`` (set by CI):
then a missing or unreachable server fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url = os.environ.get("PROTEGE_TEST_POSTGRES")
    required = os.environ.get("PROTEGE_REQUIRE_POSTGRES") == "1"
    if not url:
        message = "PROTEGE_TEST_POSTGRES is not set: run `eval \"$(bash .ci/postgres.sh)\"`"
        if required:
            pytest.fail(message + " (PROTEGE_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    import sqlalchemy as sa

    server = sa.engine.make_url(url)
    name = f"protege_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        if required:
            raise
        pytest.skip(f"PostgreSQL at {server.render_as_string(hide_password=True)} is not "
                    f"reachable: {exc}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
