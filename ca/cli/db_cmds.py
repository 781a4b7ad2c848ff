"""``iast-ca db``: the CA database's schema version, and moving an SQLite CA to PostgreSQL."""

from __future__ import annotations

import click

from ca.cli.common import echo_json, output_options
from ca.cli.progress import progress
from ca.cli.context import Env, pass_env
from ca.errors import UsageError
from ca.store import SCHEMA_VERSION, is_database_url, open_store
from ca.store.copy import copy_sqlite_to_postgres


@click.group()
def db() -> None:
    """The CA database: schema migrations, and copying an SQLite CA into PostgreSQL.

    \b
    Examples:
      iast-ca --config /etc/iast-ca/ca.toml db migrate
      iast-ca --state-dir /var/lib/iast-ca db copy --to postgresql://iast@db1:5432/iast
    """


@db.command()
@output_options(csv_ok=False)
@pass_env
def migrate(env: Env, fmt: str) -> None:
    """Bring the database (STATE/ca.db, or the config's database) to this iast-ca's schema version.

    'iast-ca init' runs it; 'iast-ca serve' refuses a PostgreSQL database at another
    version and names this command. Opening a current database writes nothing.

    \b
    Example:
      IAST_CA_DATABASE=postgresql://iast@db1:5432/iast iast-ca db migrate
    """
    location = env.config.database_location
    store = open_store(location, migrate=True)
    try:
        shown = str(store.path)
    finally:
        store.close()
    if fmt == "json":
        echo_json({"database": shown, "schema_version": SCHEMA_VERSION})
        return
    click.echo(f"{shown}: schema version {SCHEMA_VERSION}")


@db.command()
@click.option("--to", "to", required=True, metavar="URL", help="The empty PostgreSQL database: postgresql://USER@HOST:PORT/DB.")
@output_options(csv_ok=False)
@pass_env
def copy(env: Env, to: str, fmt: str) -> None:
    """Copy this state directory's SQLite database (STATE/ca.db) into an empty PostgreSQL database.

    Every event keeps its id, text and hash: 'audit verify', old checkpoints and
    inclusion proofs verify against the copy. Then set database = URL in ca.toml.
    Stop the service first: events written during the copy would not be copied.

    \b
    Example:
      iast-ca --state-dir /var/lib/iast-ca db copy --to postgresql://iast@db1:5432/iast
      IAST_CA_DATABASE=postgresql://iast@db1:5432/iast iast-ca audit verify --checkpoint cp.txt
    """
    if not is_database_url(to):
        raise UsageError(f"--to: expected postgresql://USER@HOST:PORT/DB, got {to[:40]!r}")
    source = env.config.state_dir / "ca.db"
    if not source.exists():
        raise UsageError(f"no SQLite database at {source} to copy")
    total = source.stat().st_size  # rows are unknown before the copy: the bar counts batches copied
    with progress("copying", None, show=fmt == "text" and total > 1 << 20) as update:
        counts = copy_sqlite_to_postgres(source, to, progress=lambda _table, _n: update())
    from ca.store.postgres.connection import redact

    if fmt == "json":
        echo_json({"from": str(source), "to": redact(to), "rows": counts})
        return
    click.echo(f"Copied {source} to {redact(to)}: " + ", ".join(f"{t} {n}" for t, n in counts.items() if n))
    click.echo(f"Next: set database = \"{redact(to)}\" in ca.toml, then 'iast-ca audit verify'.")
