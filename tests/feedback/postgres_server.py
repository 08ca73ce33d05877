"""A real PostgreSQL server for the feedback app's tests: a throwaway cluster, or the one named in an env var.

``RLHFKIT_TEST_POSTGRES_URL`` (e.g. ``postgresql://postgres@localhost:5432/postgres``) points the tests
at a server someone runs already; each test gets a database of its own there (so the role needs
CREATEDB). Otherwise a cluster is made with ``initdb`` in a temporary folder and started with
``pg_ctl`` on a Unix socket in that folder (no TCP port, so no clash with anything else running),
with durability switched off (``fsync=off``: nothing here outlives a crash of the machine). initdb
and postgres refuse to run as root, so as root the cluster belongs to the ``postgres`` system user
(Debian's packages create it), else to ``nobody``; the child processes switch to it themselves.

Where no server can be had, :func:`start_postgres` says why, and the tests skip with that reason,
unless ``RLHFKIT_REQUIRE_POSTGRES=1`` (CI sets it), under which they fail instead.

(A module of its own, not conftest.py, like feedback_helpers.py.)
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

URL_VARIABLE = "RLHFKIT_TEST_POSTGRES_URL"
REQUIRE_VARIABLE = "RLHFKIT_REQUIRE_POSTGRES"
SERVER_USERS = ("postgres", "nobody")
PORT = 5432  # only names the socket file (.s.PGSQL.5432) inside the cluster's own folder


class NoPostgres(RuntimeError):
    """No PostgreSQL server could be started or reached; the message says why."""


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0")


def find_bin_dir() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: on PATH, or Debian's /usr/lib/postgresql/N/bin (newest)."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def server_user() -> pwd.struct_passwd | None:
    """As root, the unprivileged account that owns the cluster; None when not root (we run it ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise NoPostgres(f"running as root, and none of the users {', '.join(SERVER_USERS)} exists to own a cluster")


class PostgresServer:
    """A PostgreSQL server to make test databases on; ``admin_url`` reaches its ``postgres`` database."""

    def __init__(self, admin_url: str, stop=None):
        self.admin_url = admin_url
        self._stop = stop

    def _admin(self):
        import psycopg

        return psycopg.connect(self.admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    def create_database(self) -> str:
        """A new empty database; its URL (``postgresql://...``, as a person would give ``--db``)."""
        name = f"rlhfkit_test_{uuid.uuid4().hex[:12]}"
        with self._admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def drop_database(self, url: str) -> None:
        name = url.split("?", 1)[0].rsplit("/", 1)[1]
        with self._admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def url_of(self, database: str) -> str:
        base, _, query = self.admin_url.partition("?")
        return base.rsplit("/", 1)[0] + "/" + database + (f"?{query}" if query else "")

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()


def run_as(user: pwd.struct_passwd | None, command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program, switched to ``user`` when given (initdb and postgres refuse root)."""
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "LC_ALL": "C.UTF-8"}, **kwargs)


def start_cluster(bin_dir: Path) -> PostgresServer:
    """initdb a new cluster in a temporary folder and start it on a Unix socket there."""
    user = server_user()
    root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))  # short: a socket path must stay under 107 bytes
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, log = root / "data", root / "server.log"
    steps = [
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync",
         "--no-instructions"],
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
         f"-k {root} -p {PORT} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
         "-c full_page_writes=off -c max_connections=200", "start"],
    ]
    for step in steps:
        done = run_as(user, step, cwd=root)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()[-2000:]
            if log.exists():
                detail += "\n" + log.read_text(errors="replace")[-2000:]
            shutil.rmtree(root, ignore_errors=True)
            raise NoPostgres(f"{Path(step[0]).name} failed: {detail}")

    def stop() -> None:
        run_as(user, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], cwd=root)
        shutil.rmtree(root, ignore_errors=True)

    return PostgresServer(f"postgresql://postgres@/postgres?host={quote(str(root), safe='/')}&port={PORT}", stop)


def start_postgres() -> PostgresServer:
    """The server of ``RLHFKIT_TEST_POSTGRES_URL``, or a new throwaway cluster; NoPostgres says why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError as error:
        raise NoPostgres("psycopg is not installed (pip install -e '.[dev]')") from error
    if os.environ.get(URL_VARIABLE):
        server = PostgresServer(os.environ[URL_VARIABLE])
        try:
            server._admin().close()
        except Exception as error:
            raise NoPostgres(f"cannot connect to {URL_VARIABLE}: {error}") from error
        return server
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise NoPostgres("no PostgreSQL server programs (initdb, pg_ctl) found: apt-get install postgresql, "
                         f"or set {URL_VARIABLE}")
    return start_cluster(bin_dir)
