"""A throwaway PostgreSQL server for the tests: initdb into its own temporary directory, postgres on
127.0.0.1 and a free port, run as an unprivileged user (postgres refuses root), removed at the end."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

USER = "teambot"
UNPRIVILEGED = "nobody"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
TEST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def server_bindir() -> Path:
    """The newest PostgreSQL server's bin directory (holding initdb and postgres)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: _version(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    if pg_config := shutil.which("pg_config"):
        bindir = Path(subprocess.run([pg_config, "--bindir"], check=False, capture_output=True, text=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    raise RuntimeError(
        "no PostgreSQL server binaries: no /usr/lib/postgresql/*/bin/initdb, and `pg_config --bindir` names none; "
        "install Debian's postgresql package (`make test` does)"
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {log}: {e})"


@contextmanager
def running_server() -> Iterator[str]:
    """Starts a PostgreSQL server; yields the URL of its `postgres` database (user teambot, no password)."""
    bindir = server_bindir()
    uid = gid = groups = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            raise RuntimeError(f"postgres refuses to run as root and there is no `{UNPRIVILEGED}` user to run it as: create one") from None
        uid, gid, groups = account.pw_uid, account.pw_gid, []
    directory = Path(tempfile.mkdtemp(prefix="teambot-pg-"))
    if uid is not None:
        os.chown(directory, uid, gid)
    data, log_path = directory / "data", directory / "server.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("ab") as log:
            initdb = subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
                check=False, stdout=log, stderr=subprocess.STDOUT, cwd=directory, user=uid, group=gid, extra_groups=groups,
            )  # fmt: skip
            if initdb.returncode:
                raise RuntimeError(f"initdb failed (exit code {initdb.returncode}); the log ends:\n{_log_tail(log_path)}")
            port = _free_port()
            settings = [arg for setting in TEST_SETTINGS for arg in ("-c", setting)]
            process = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(directory), *settings],
                stdout=log, stderr=subprocess.STDOUT, cwd=directory, user=uid, group=gid, extra_groups=groups,
            )  # fmt: skip
        url = f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        _wait_until_ready(url, process, log_path)
        yield url
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError as e:
            error = e
        if process.poll() is not None or time.monotonic() > deadline:
            state = f"exited with code {process.returncode}" if process.returncode is not None else f"not ready after {START_TIMEOUT_S} s"
            raise RuntimeError(f"PostgreSQL server at {url} {state} (last error: {error}); the log ends:\n{_log_tail(log)}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT: disconnect clients, no waiting for them); killed if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def create_database(server_url: str) -> str:
    """Creates a new, empty database on the server at ``server_url``; returns its URL."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
