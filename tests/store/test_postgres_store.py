"""The saga store contract on PostgreSQL: each test in a schema of its own, dropped after."""

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from eventbook.errors import StoreError
from eventbook.store import SagaStore
from eventbook.testing.store_contract import SagaStoreContract, saga
from tests.conftest import server

pytestmark = pytest.mark.postgres

URL = os.environ.get("EVENTBOOK_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def schema() -> Iterator[str]:
    """A new, empty schema; dropped with everything in it after the test."""
    server("PostgreSQL", 5432)
    import psycopg

    name = f"eb_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    yield name
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE")


def in_schema(schema: str) -> str:
    """The test server's URL, with the tables in `schema`."""
    separator = "&" if "?" in URL else "?"
    return f"{URL}{separator}options=-csearch_path%3D{schema}"


class TestPostgresStore(SagaStoreContract):
    @pytest.fixture
    def new_store(self, schema: str) -> Callable[[], SagaStore]:
        from eventbook.store.postgres import PostgresSagaStore

        return lambda: PostgresSagaStore(in_schema(schema))


async def test_stores_opening_a_new_schema_together_all_work(schema: str) -> None:
    from eventbook.store.postgres import PostgresSagaStore

    stores = [PostgresSagaStore(in_schema(schema)) for _ in range(6)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        for n, store in enumerate(stores):
            assert await store.create(saga("together", n))
        assert len(await stores[0].list(name="together")) == len(stores)
    finally:
        for store in stores:
            await store.close()


async def test_a_broken_connection_is_replaced(schema: str) -> None:
    import psycopg

    from eventbook.store.postgres import PostgresSagaStore

    store = PostgresSagaStore(in_schema(schema))
    await store.open()
    try:
        await store.create(saga("broken"))
        assert store._conn is not None
        pid = store._conn.info.backend_pid
        with psycopg.connect(URL, autocommit=True) as admin:
            # The server ends the store's session (a restart, a failover, an idle timeout).
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        with pytest.raises(StoreError, match="failed"):
            await store.get("broken:0")
        found = await store.get("broken:0")  # on a new connection
        assert found is not None
        assert found[0].id == "broken:0"
    finally:
        await store.close()


async def test_errors_are_store_errors_without_the_password() -> None:
    from eventbook.store.postgres import PostgresSagaStore

    store = PostgresSagaStore("postgresql://eb:hunter2@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(StoreError, match="cannot connect") as caught:
        await store.open()
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)
