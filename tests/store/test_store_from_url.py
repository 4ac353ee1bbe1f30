"""Choosing a saga store by URL."""

import sys
from pathlib import Path

import pytest

from eventbook.errors import ConfigurationError
from eventbook.store import SagaStore, schemes, store_from_url
from eventbook.store.memory import MemorySagaStore
from eventbook.store.sqlite import SqliteSagaStore


def test_memory_gives_a_new_store_each_time() -> None:
    first, second = store_from_url("memory://"), store_from_url("memory://")
    assert isinstance(first, MemorySagaStore)
    assert first is not second


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///sagas.db", "sagas.db"), ("sqlite:////tmp/x/sagas.db", "/tmp/x/sagas.db")],
)
def test_sqlite_urls_are_the_brokers(url: str, path: str) -> None:
    store = store_from_url(url)
    assert isinstance(store, SqliteSagaStore)
    assert store.settings.path == path


def test_sqlite_url_may_carry_the_brokers_parameters(tmp_path: Path) -> None:
    store = store_from_url(f"sqlite:///{tmp_path}/eb.db?prefetch=10&durability=full")
    assert isinstance(store, SqliteSagaStore)
    assert store.settings.durability == "full"
    with pytest.raises(ConfigurationError, match="unknown sqlite:// parameter"):
        store_from_url(f"sqlite:///{tmp_path}/eb.db?colour=blue")
    with pytest.raises(ConfigurationError, match="expected sqlite:///"):
        store_from_url("sqlite://")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_schemes(scheme: str) -> None:
    store = store_from_url(f"{scheme}://user:secret@db.example:5432/app")
    assert type(store).__name__ == "PostgresSagaStore"


def test_unknown_scheme_names_the_supported_ones_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_from_url("mysql://root:hunter2@localhost/app")
    message = str(caught.value)
    assert "hunter2" not in message
    for scheme in schemes():
        assert f"{scheme}://" in message


def test_missing_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "eventbook.store.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'eventbook\[postgres\]'"):
        store_from_url("postgresql://localhost/app")


def test_a_bad_postgres_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="bad PostgreSQL URL") as caught:
        store_from_url("postgresql://user:hunter2@host/db?nonsense=1")
    assert "hunter2" not in str(caught.value)


def test_stores_are_saga_stores() -> None:
    assert isinstance(store_from_url("memory://"), SagaStore)
