"""The contract on `sqlite://`: the embedded durable broker."""

from pathlib import Path

import pytest

from eventbook.testing.contract import WireBrokerContract


class TestSqliteBroker(WireBrokerContract):
    @pytest.fixture
    def broker_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/contract.db?prefetch=10"

    def fast_redelivery(self, url: str) -> str:
        return f"{url}&lease=1"
