"""The saga store contract on `memory://`."""

from collections.abc import Callable

import pytest

from eventbook.store import SagaStore
from eventbook.store.memory import MemorySagaStore
from eventbook.testing.store_contract import SagaStoreContract


class TestMemoryStore(SagaStoreContract):
    @pytest.fixture
    def new_store(self) -> Callable[[], SagaStore]:
        store = MemorySagaStore()  # one process: every "other" store is this one
        return lambda: store
