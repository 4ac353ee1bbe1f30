"""`redis://host:6379/0`: Redis Streams with consumer groups (Redis 6.2 or newer).

Topic `T` of book `B` is the stream `B.T`; each entry holds the CloudEvent's JSON in
its field `event`. Each handler is a consumer group on its topic's stream, named
after the handler; replicas of a service are consumers of the same group (one per
process) and share its events. Attempts are the server's delivery counts.

* A failed event stays pending and is scheduled in the sorted set
  `B:retry:<topic>:<group>` (due time from the server's clock); when due it is
  claimed again (XCLAIM), which counts the delivery.
* A consumer renews what it holds; entries of a consumer that stopped renewing for
  a lease (a dead process) are reclaimed by the group's other consumers
  (XAUTOCLAIM). A stopping consumer gives back what it did not finish at once.
* Dead letters are entries of the stream `B:dead` (fields event, event_id, topic,
  group, reason, error, attempts, entry); a replay appends the event again to its
  topic's stream with a field `group`, which only that group handles.
* A publish is one Lua script: the event is appended only if its dedupe key
  `B:dedupe:<event id>` does not exist, so a publish re-sent after a lost reply is
  appended once (within `dedupe` seconds).
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
