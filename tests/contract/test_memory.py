"""The contract on `memory://`.

Not applicable to an in-process broker, so not part of `BrokerContract` (they are in
`WireBrokerContract`): competing replicas and redelivery after a killed consumer
(nothing crosses or outlives the process), and decoding checks on bytes (it moves
validated objects, never bytes). The publish-side size limit does not apply either.
"""

import pytest

from eventbook.testing.contract import BrokerContract


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return "memory://"
