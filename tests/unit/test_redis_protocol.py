"""The redis:// broker's own reading of the Redis protocol (RESP2), in all its shapes.

Its hot paths (reads of many entries, publishes) parse replies themselves; a reply
split anywhere across reads must be recognised as incomplete, never misread.
"""

import pytest

pytest.importorskip("redis")

from redis.exceptions import NoScriptError, ResponseError

from eventbook.brokers.redis.line import _Incomplete, pack, parse

READ = (
    b"*1\r\n*2\r\n$5\r\nshop.\r\n*2\r\n"
    b'*2\r\n$3\r\n1-0\r\n*2\r\n$5\r\nevent\r\n$3\r\n{"}\r\n'
    b"*2\r\n$3\r\n2-0\r\n*4\r\n$5\r\nevent\r\n$0\r\n\r\n$5\r\ngroup\r\n$1\r\ng\r\n"
)
REPLIES = [
    (READ, [[b"shop.", [[b"1-0", [b"event", b'{"}']], [b"2-0", [b"event", b"", b"group", b"g"]]]]]),
    (b"*-1\r\n", None),
    (b"$-1\r\n", None),
    (b":-42\r\n", -42),
    (b"+OK\r\n", b"OK"),
    (b"*3\r\n$-1\r\n:1\r\n*0\r\n", [None, 1, []]),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
]


@pytest.mark.parametrize(("raw", "value"), REPLIES)
def test_a_reply_is_read_whole_and_only_whole(raw: bytes, value: object) -> None:
    assert parse(raw + b":7\r\n", 0) == (value, len(raw))  # the next reply is left alone
    for cut in range(len(raw)):
        with pytest.raises(_Incomplete):
            parse(raw[:cut], 0)


def test_errors_are_the_exceptions_callers_tell_apart() -> None:
    error, _ = parse(b"-NOGROUP No such key 'x'\r\n", 0)
    assert type(error) is ResponseError
    assert str(error).startswith("NOGROUP")
    missing, _ = parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(missing, NoScriptError)


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert pack("XACK", b"s\r\n", 12) == b"*3\r\n$4\r\nXACK\r\n$3\r\ns\r\n\r\n$2\r\n12\r\n"
