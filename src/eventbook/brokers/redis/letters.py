"""Dead letters of a book: entries of the stream `<book>:dead`, listed, replayed, purged.

Each letter keeps the event (field `event`) with why it failed (`reason`, `error`,
`attempts`), where (`topic`, `group`, the original `entry`) and the CloudEvent's
id (`event_id`); its own entry id is its id, and its timestamp when it failed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..base import DeadLetter
from . import scripts

if TYPE_CHECKING:
    from .broker import RedisBroker

#: Letters read, replayed or purged per command.
PAGE = 500


async def read(broker: RedisBroker) -> list[DeadLetter]:
    """Every dead letter of the book, oldest first."""
    letters: list[DeadLetter] = []
    start = "-"
    while True:
        rows = await broker.reliably(
            "read dead letters",
            functools.partial(
                broker.client.execute_command, "XRANGE", broker.keys.dead, start, "+", "COUNT", PAGE
            ),
        )
        letters += (_letter(entry, fields) for entry, fields in rows)
        if len(rows) < PAGE:
            return letters
        start = f"({letters[-1].id}"


async def replay(broker: RedisBroker, ids: Sequence[str] | None) -> int:
    """Append the letters' events to their topics again, for their group only; drop them."""
    chosen = await _chosen(broker, ids)
    replayed = 0
    for lo in range(0, len(chosen), PAGE):
        part = chosen[lo : lo + PAGE]
        streams = [broker.keys.stream(letter.topic) for letter in part]
        replayed += await broker.reliably(
            "replay dead letters",
            functools.partial(
                scripts.REPLAY,
                broker.client,
                (broker.keys.dead, *streams),
                [letter.id for letter in part],
            ),
        )
    return replayed


async def purge(broker: RedisBroker, ids: Sequence[str] | None) -> int:
    chosen = [letter.id for letter in await _chosen(broker, ids)]
    purged = 0
    for lo in range(0, len(chosen), PAGE):
        part = chosen[lo : lo + PAGE]
        purged += await broker.reliably(
            "purge dead letters",
            functools.partial(broker.client.execute_command, "XDEL", broker.keys.dead, *part),
        )
    return purged


async def _chosen(broker: RedisBroker, ids: Sequence[str] | None) -> list[DeadLetter]:
    letters = await read(broker)
    if ids is None:
        return letters
    wanted = set(ids)
    return [letter for letter in letters if letter.id in wanted]


def _letter(entry: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    def text(name: bytes) -> str:
        return fields.get(name, b"").decode("utf-8", "replace")

    failed_at = datetime.fromtimestamp(int(entry.split(b"-")[0]) / 1000, UTC)
    return DeadLetter(
        id=entry.decode(),
        event_id=text(b"event_id"),
        topic=text(b"topic"),
        handler=text(b"group"),
        reason=text(b"reason"),
        error=text(b"error"),
        attempts=int(fields.get(b"attempts", b"0")),
        failed_at=failed_at.isoformat(timespec="milliseconds"),
        body=text(b"event"),
    )
