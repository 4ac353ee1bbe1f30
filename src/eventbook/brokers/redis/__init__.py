"""`redis://host:6379/0`: Redis Streams with consumer groups (Redis 6.2 or newer).

Topic `T` of book `B` is the stream `B.T`; each entry holds the CloudEvent's JSON in
its field `event`. Each handler is a consumer group on its topic's stream, named
after the handler; replicas of a service are consumers of the same group (one per
process) and share its events. Attempts are the server's delivery counts.

* A publish is one Lua script (the publishes of one moment share it): the entry is
  appended unless the dedupe key `B:dedupe:<event id>` exists, which it then sets
  for `dedupe` seconds; so a publish re-sent after a lost reply is appended once.
* A failed event stays pending; it is scheduled in the sorted set
  `B:retry:<topic>:<group>` (due time by the server's clock) and, when due, claimed
  again by a consumer of the group (XCLAIM), which counts the delivery.
* A consumer renews what it holds; what a consumer stopped renewing for a lease (its
  process died) is reclaimed by the group's others (XAUTOCLAIM). A stopping consumer
  gives back what it did not start, claimable at once.
* Dead letters are entries of the stream `B:dead`; a replay appends the event to its
  topic's stream again with a field `group`, which only that group handles.
* Streams are trimmed below the oldest entry some group still needs.

Durability needs the server's append-only file with an fsync per write
(`appendonly yes`, `appendfsync always`): the server then answers a publish only
once it is on disk.

URL parameters: `lease` (seconds, 30), `prefetch` (entries read at once, 100),
`dedupe` (seconds a published id is remembered, 120; 0: off), `publish_timeout`
(seconds, 30), `connect_timeout` (seconds, 5), `trim` (seconds between trims, 10).
"""

from .broker import RedisBroker
from .settings import RedisSettings

__all__ = ["RedisBroker", "RedisSettings"]
