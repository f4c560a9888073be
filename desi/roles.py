"""Catalog schemas and roles (DESIGN: "Catalog contract").

- ``desi_owner``: owns ``dr1``, ``results`` and ``vi``; ingest runs as the owner.
- ``desi_reader``: read-only on those schemas.
- one login role per hub user (``desi_<name>``), member of ``desi_reader``, with a
  schema of its own, a statement timeout and a connection limit; its password is
  renewed at every spawn and reaches only that user's server.
"""

from __future__ import annotations

import re
import secrets

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SCHEMAS = ("dr1", "results", "vi")
OWNER = "desi_owner"
READER = "desi_reader"
ROLE_PREFIX = "desi_"


def role_name(username: str) -> str:
    """PostgreSQL role of a hub user: ``desi_`` + the name, lower-cased, safe characters."""
    safe = re.sub(r"[^a-z0-9_]", "_", username.lower())
    return (ROLE_PREFIX + safe)[:63]


def schema_name(username: str) -> str:
    """The user's personal schema: the name with unsafe characters replaced."""
    return re.sub(r"[^a-z0-9_]", "_", username.lower())[:63]


def prepare_catalog(admin_dsn: str) -> None:
    """Create the owner and reader roles and the shared schemas (idempotent)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for role, login in ((OWNER, False), (READER, False)):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE ROLE {} {}").format(
                        sql.Identifier(role), sql.SQL("LOGIN" if login else "NOLOGIN")
                    )
                )
        dbname = conn.info.dbname
        conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dbname))
        )
        conn.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(READER)
            )
        )
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for schema in SCHEMAS:
            ident = sql.Identifier(schema)
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                    ident, sql.Identifier(OWNER)
                )
            )
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, sql.Identifier(READER))
            )
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                    ident, sql.Identifier(READER)
                )
            )
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}"
                ).format(sql.Identifier(OWNER), ident, sql.Identifier(READER))
            )


def ensure_user_role(
    admin_dsn: str,
    username: str,
    *,
    statement_timeout: str = "10min",
    connection_limit: int = 20,
) -> str:
    """Create or refresh a hub user's login role; return its DSN.

    The password is renewed on every call, so a DSN stops working once the
    next server of that user starts.
    """
    role, schema = role_name(username), schema_name(username)
    password = secrets.token_urlsafe(24)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT {}").format(
                sql.Identifier(role), sql.Literal(password), sql.Literal(connection_limit)
            )
        )
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(READER), sql.Identifier(role)))
        conn.execute(
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                sql.Identifier(role), sql.Literal(statement_timeout)
            )
        )
        conn.execute(
            sql.SQL("ALTER ROLE {} SET search_path = {}, dr1, results, vi, public").format(
                sql.Identifier(role), sql.Identifier(schema)
            )
        )
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
    params = conninfo_to_dict(admin_dsn)
    params.update(user=role, password=password)
    return make_conninfo(**params)


def database_client_env(dsn: str) -> tuple[dict[str, str], str]:
    """libpq variables and a pgpass line, so ``psql`` works with no arguments."""
    params = conninfo_to_dict(dsn)
    env = {
        "PGHOST": str(params.get("host", "")),
        "PGPORT": str(params.get("port", "5432")),
        "PGUSER": str(params.get("user", "")),
        "PGDATABASE": str(params.get("dbname", "")),
    }

    def escape(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace(":", "\\:")

    line = ":".join(
        escape(params.get(k, "*")) for k in ("host", "port", "dbname", "user", "password")
    )
    return env, line + "\n"


def disable_user_role(admin_dsn: str, username: str) -> None:
    """A deleted hub user's role can no longer log in; its schema is kept."""
    role = role_name(username)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
