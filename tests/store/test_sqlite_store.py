"""The saga store contract on `sqlite://`, and what only a shared file does."""

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from eventbook.brokers.sqlite import SqliteBroker
from eventbook.errors import StoreError
from eventbook.store import SagaStore
from eventbook.store.sqlite import SqliteSagaStore
from eventbook.testing.store_contract import SagaStoreContract, saga


class TestSqliteStore(SagaStoreContract):
    @pytest.fixture
    def new_store(self, tmp_path: Path) -> Callable[[], SagaStore]:
        return lambda: SqliteSagaStore(f"sqlite:///{tmp_path}/sagas.db")


@pytest.mark.parametrize("store_first", [True, False])
async def test_shares_a_file_with_the_sqlite_broker(tmp_path: Path, store_first: bool) -> None:
    url = f"sqlite:///{tmp_path}/eventbook.db?prefetch=10"
    broker, store = SqliteBroker(url, "shop"), SqliteSagaStore(url)
    if store_first:
        await store.open()
        await broker.connect()
    else:
        await broker.connect()
        await store.open()
    try:
        assert await store.create(saga("shared"))
        await broker.declare("group", "topic")
    finally:
        await store.close()
        await broker.close()
    db = sqlite3.connect(tmp_path / "eventbook.db")
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        # Whichever opened the new file first, it is the same file.
        assert db.execute("PRAGMA page_size").fetchone()[0] == 1024
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    assert {"eb_events", "eb_sagas", "eb_saga_steps", "eb_saga_commands"} <= tables


async def test_a_file_with_another_saga_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    store = SqliteSagaStore(f"sqlite:///{path}")
    await store.open()
    await store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE eb_saga_meta SET value = '99' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="version 99"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.get("x")


async def test_an_unopenable_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match=r"dir\.db"):
        await SqliteSagaStore(f"sqlite:///{tmp_path}/dir.db").open()
