"""The PostgreSQL fixtures: a fresh database per test, on a server that does not run as root."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests.postgres import create_database


def table_names(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_each_state_url_is_a_separate_database(state_url: str, postgres_server: str) -> None:
    other = create_database(postgres_server)
    assert other != state_url
    with psycopg.connect(state_url) as conn:
        conn.execute("CREATE TABLE only_here (id int)")
    assert table_names(state_url) == {"only_here"}
    assert table_names(other) == set()


@pytest.mark.parametrize("run", [1, 2])
def test_state_url_starts_empty(state_url: str, run: int) -> None:
    """Both runs create the same table: each finds an empty database."""
    assert table_names(state_url) == set()
    with psycopg.connect(state_url) as conn:
        conn.execute("CREATE TABLE shared_name (id int)")


def test_server_does_not_run_as_root(postgres_server: str) -> None:
    with psycopg.connect(postgres_server) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    assert row is not None
    assert os.stat(row[0]).st_uid != 0
