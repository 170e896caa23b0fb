"""Move a local tracking store into a team's tracking server, keeping every ID.

The pipeline's run records (`runs/*.json`, in git) name MLflow run IDs, and every registered version points at
a logged model by its ID. A team that moves from the default local store (`sqlite:///mlflow.db`, artifacts in
`mlruns/`) to its server (`make server`: PostgreSQL and proxied artifacts) has to keep those IDs, and MLflow's
own copying between stores makes new ones. So this copies the database itself: every row of every table of
MLflow's schema, in foreign-key order, into the server's database, in one transaction. Artifact locations inside
the local artifact folder become `mlflow-artifacts:/...` URIs, which the server resolves under its
`--artifacts-destination`, and the files are copied there.

    python -m ehrbert.move_store --source sqlite:///mlflow.db --source-artifacts mlruns \\
        --target postgresql://mlflow@db.example.org/mlflow --artifacts-destination /shared/mlflow-artifacts

The target database gets MLflow's schema if it has none, and must hold no runs, registered models or
experiments other than the default one (a fresh database, or one that a server has only initialized). Both
stores must be at the schema of the installed MLflow (`mlflow db upgrade <uri>` brings an older one there).
Nothing is half-moved: on any error the transaction is rolled back and the files copied so far are deleted.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import sqlalchemy as sa
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from ehrbert.stage import setup_logging

log = logging.getLogger(__name__)

PROXIED = "mlflow-artifacts:"  # the scheme of artifacts that the tracking server serves from its destination
SCHEMA_TABLE = "alembic_version"  # the schema's version, which the target already has
BATCH = 5000  # rows a statement


class MoveError(Exception):
    """A store that cannot be moved, or cannot take a move; the message says which and why."""


def open_store(uri: str, artifact_root: str) -> sa.Engine:
    """The engine of a store at the installed MLflow's schema; an empty database gets the schema first."""
    try:
        SqlAlchemyStore(uri, artifact_root)
    except MlflowException as error:
        raise MoveError(f"{uri}: {error.message}") from None
    return sa.create_engine(uri)


def rewrite(value, prefixes: tuple[str, ...]):
    """`value` with a leading local artifact location replaced by the proxied scheme; anything else unchanged."""
    if isinstance(value, str):
        for prefix in prefixes:
            if value == prefix or value.startswith(prefix + "/"):
                return PROXIED + value[len(prefix) :]
    return value


def check_empty(connection: sa.Connection, tables: dict[str, sa.Table], target: str) -> None:
    held = {
        name: connection.execute(sa.select(sa.func.count()).select_from(tables[name])).scalar_one()
        for name in ("runs", "registered_models", "experiments")
    }
    if held["runs"] or held["registered_models"] or held["experiments"] > 1:
        raise MoveError(
            f"{target} is not empty ({held['runs']} runs, {held['registered_models']} registered models, "
            f"{held['experiments']} experiments): move into a fresh database"
        )


def reset_sequences(connection: sa.Connection, tables: list[sa.Table]) -> None:
    """PostgreSQL: each serial column's sequence continues after the highest moved value."""
    if connection.dialect.name != "postgresql":
        return
    for table in tables:
        for column in table.primary_key.columns:
            sequence = connection.execute(
                sa.text("SELECT pg_get_serial_sequence(:table, :column)"),
                {"table": table.name, "column": column.name},
            ).scalar_one()
            if sequence:
                highest = f'SELECT COALESCE(MAX("{column.name}"), 0) + 1 FROM "{table.name}"'
                connection.execute(sa.text(f"SELECT setval(:sequence, ({highest}), false)"), {"sequence": sequence})


def copy_artifacts(source: Path, destination: Path) -> list[Path]:
    """Every file under `source` to the same place under `destination`; returns the files made. An existing file
    is an error (it belongs to another store)."""
    made: list[Path] = []
    try:
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            target = destination / file.relative_to(source)
            if target.exists():
                raise MoveError(f"{target} exists: the artifact destination already holds another store's files")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
            made.append(target)
    except BaseException:
        remove(made)
        raise
    return made


def remove(files: list[Path]) -> None:
    for file in files:
        file.unlink(missing_ok=True)


def move(source: str, source_artifacts: Path, target: str, destination: Path) -> dict[str, int]:
    """Move the store; returns the rows moved per table."""
    source_artifacts = source_artifacts.resolve()
    prefixes = (source_artifacts.as_uri(), str(source_artifacts))
    source_engine = open_store(source, str(source_artifacts))
    target_engine = open_store(target, PROXIED + "/")
    source_meta, target_meta = sa.MetaData(), sa.MetaData()
    source_meta.reflect(bind=source_engine)
    target_meta.reflect(bind=target_engine)
    tables = [t for t in target_meta.sorted_tables if t.name != SCHEMA_TABLE]  # parents before children
    missing = sorted(set(source_meta.tables) - set(target_meta.tables))
    if missing:
        raise MoveError(f"{target} lacks tables {', '.join(missing)}: run `mlflow db upgrade` on both stores")
    moved: dict[str, int] = {}
    with source_engine.connect() as reader, target_engine.connect() as writer:  # closed uncommitted: rolled back
        check_empty(writer, target_meta.tables, target)
        for table in reversed(tables):  # the target's default rows (experiment 0, ...) make way for the source's
            writer.execute(table.delete())
        for table in tables:
            if table.name not in source_meta.tables:
                continue
            columns = [c.name for c in source_meta.tables[table.name].columns if c.name in table.columns]
            rows = reader.execute(sa.select(*(source_meta.tables[table.name].c[c] for c in columns))).mappings()
            moved[table.name] = 0
            while batch := rows.fetchmany(BATCH):
                writer.execute(table.insert(), [{k: rewrite(v, prefixes) for k, v in row.items()} for row in batch])
                moved[table.name] += len(batch)
        reset_sequences(writer, tables)
        made = copy_artifacts(source_artifacts, destination) if source_artifacts.is_dir() else []
        try:
            writer.commit()
        except BaseException:
            remove(made)
            raise
    log.info("moved %d rows in %d tables and %d artifact files", sum(moved.values()), len(moved), len(made))
    return moved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="sqlite:///mlflow.db", help="the local store's database URI")
    parser.add_argument("--source-artifacts", type=Path, default=Path("mlruns"), help="the local artifact folder")
    parser.add_argument("--target", required=True, help="the server's database URI (postgresql://...)")
    parser.add_argument(
        "--artifacts-destination", type=Path, required=True, help="the server's --artifacts-destination folder"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        moved = move(args.source, args.source_artifacts, args.target, args.artifacts_destination)
    except MoveError as error:
        raise SystemExit(f"move_store: {error}") from None
    for table, rows in moved.items():
        if rows:
            log.info("%s: %d rows", table, rows)


if __name__ == "__main__":
    main()
