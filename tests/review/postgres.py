"""A throwaway PostgreSQL cluster for tests: Debian's server binaries, a temp directory, a free port.

`initdb` refuses to run as root, so as root the cluster runs as the `postgres` user (created by
Debian's package). Tests skip when no server is installed, unless MODERATION_POSTGRES_TESTS=require
(.ci/run sets it), in which case they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.serving import free_port

REQUIRE = os.environ.get("MODERATION_POSTGRES_TESTS") == "require"


def server_bin() -> Path | None:
    found = shutil.which("initdb")
    if found and Path(found).resolve().parent.joinpath("pg_ctl").exists():
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists():
            return Path(d)
    return None


def unavailable(why: str):
    if REQUIRE:
        pytest.fail(f"MODERATION_POSTGRES_TESTS=require but {why}")
    pytest.skip(why)


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """Start a cluster; yield the URL of its `postgres` database (trust auth on 127.0.0.1)."""
    bindir = server_bin()
    if bindir is None:
        unavailable("no PostgreSQL server (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="review-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            unavailable("running as root without runuser to start PostgreSQL as the postgres user")
        try:
            shutil.chown(sock, "postgres")
            shutil.chown(root, "postgres")
        except (LookupError, PermissionError) as e:
            unavailable(f"no postgres user to run the server as ({e})")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100", "start")
    except subprocess.CalledProcessError as e:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        unavailable(f"PostgreSQL did not start: {e.stderr or e.stdout} {log[-2000:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the cluster; its URL."""
    import psycopg

    name = "review_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name
