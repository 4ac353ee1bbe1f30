import json
import uuid

import pytest

import eventbook as eb
from eventbook import ids
from eventbook.envelope import Envelope, decode, encode
from tests.conftest import SELO


def test_ids_are_uuid7_unique_and_sortable() -> None:
    made = [ids.new_id() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    parsed = uuid.UUID(made[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_structured_cloudevent_round_trip() -> None:
    envelope = Envelope("customer.signup", SELO, "/shop/CustomerService")
    body = encode(envelope, SELO.model_dump_json().encode())
    obj = json.loads(body)
    assert obj["specversion"] == "1.0"
    assert obj["type"] == "customer.signup"
    assert obj["source"] == "/shop/CustomerService"
    assert obj["datacontenttype"] == "application/json"
    assert obj["id"] == envelope.id
    assert obj["time"].endswith("Z")
    assert obj["correlationid"] == envelope.id  # a root event is its own correlation
    assert "causationid" not in obj
    assert obj["data"] == SELO.model_dump()

    back = decode(body)
    assert (back.id, back.type, back.source, back.time) == (
        envelope.id,
        envelope.type,
        envelope.source,
        envelope.time,
    )
    assert back.data == SELO.model_dump()


def test_child_event_joins_its_parents_correlation() -> None:
    root = Envelope("a", 1, "/x")
    child = Envelope("b", 2, "/x", root)
    grandchild = Envelope("c", 3, "/x", child)
    assert child.correlationid == root.id == grandchild.correlationid
    assert child.causationid == root.id
    assert grandchild.causationid == child.id


def test_unknown_extensions_are_carried_along() -> None:
    body = json.dumps(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": {}, "tenant": "acme"}
    )
    envelope = decode(body)
    assert envelope.extensions == {"tenant": "acme"}
    assert json.loads(encode(envelope, b"{}"))["tenant"] == "acme"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"specversion": "0.3", "id": "1", "source": "s", "type": "t"}', "specversion"),
        (b'{"specversion": "1.0", "source": "s", "type": "t"}', "'id'"),
        (
            b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data_base64": "AA=="}',
            "JSON only",
        ),
    ],
)
def test_decode_refuses_what_is_not_a_cloudevent(body: bytes, message: str) -> None:
    with pytest.raises(eb.DecodeError, match=message):
        decode(body)
