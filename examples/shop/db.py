"""SQLite for the shop's services: one file per service, shared by its instances.

WAL mode lets two instances of a service (two processes) read while one writes;
``busy_timeout`` makes a writer wait for the other instead of failing. Each operation
opens its own connection in a worker thread (``anyio.to_thread``): sqlite3 connections
belong to one thread, and opening one costs microseconds next to a network hop.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from meshkit import MeshSettings

T = TypeVar("T")
#: Where the shop's databases live; instances of one service must share it.
DATA_DIR_VARIABLE = "SHOP_DATA_DIR"
_BUSY_TIMEOUT_MS = 10_000


def database_path(settings: MeshSettings | None, name: str) -> Path:
    """``$SHOP_DATA_DIR/<name>.db``, else ``<the instance's state dir>/<name>.db`` (the
    working directory for an app outside the mesh: no settings)."""
    directory = os.environ.get(DATA_DIR_VARIABLE)
    if directory:
        return Path(directory) / f"{name}.db"
    return (settings.state_dir if settings else Path()) / f"{name}.db"


class Database:
    """A SQLite file with a schema and seed rows applied at startup."""

    def __init__(
        self,
        path: Path,
        *,
        schema: str,
        seed: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self.schema = schema
        self.seed = seed

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE.
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connect()
        try:
            # IMMEDIATE takes the write lock up front: two instances checking then
            # updating the same row cannot interleave.
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    def _setup(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._connect()
        try:
            _use_wal(connection)
        finally:
            connection.close()
        with self._transaction() as connection:
            for statement in self.schema.split(";"):
                if statement.strip():
                    connection.execute(statement)
            if self.seed is not None:
                self.seed(connection)

    async def setup(self) -> None:
        """Create the file, schema and seed rows; safe when another instance races us."""
        await anyio.to_thread.run_sync(self._setup)

    async def read(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            connection = self._connect()
            try:
                return operation(connection)
            finally:
                connection.close()

        return await anyio.to_thread.run_sync(run)

    async def write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` in one write transaction (rolled back if it raises)."""

        def run() -> T:
            with self._transaction() as connection:
                return operation(connection)

        return await anyio.to_thread.run_sync(run)


def database_lifespan(
    name: str,
    *,
    schema: str,
    seed: Callable[[sqlite3.Connection], None] | None = None,
    path: Path | None = None,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan that prepares the service's database and puts it on ``app.state.db``.

    The file is ``path``, else ``database_path(app.settings, name)``: known only once the
    app has its settings.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        settings = getattr(app, "settings", None)  # a plain Starlette app has none
        database = Database(path or database_path(settings, name), schema=schema, seed=seed)
        await database.setup()
        app.state.db = database
        yield

    return lifespan


def _use_wal(connection: sqlite3.Connection, *, attempts: int = 100) -> None:
    """Switch the file to WAL (persistent: once is enough for every instance).

    Changing the journal mode while another instance holds a lock answers "database is
    locked" at once, without waiting on the busy timeout, so it is retried here.
    """
    for _ in range(attempts):
        try:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode == "wal":
                return
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    raise sqlite3.OperationalError("could not switch the database to WAL: still locked")
