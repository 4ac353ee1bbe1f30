"""`nats://host:4222`: NATS JetStream (server 2.9 or later), for production and clusters.

Each book is one stream capturing `<book>.>` (interest retention: an event stays
until every handler that wants it acked it); topic `T` is the subject `<book>.T`;
each handler on each topic is a durable pull consumer (see `names` for the exact
mapping, a public contract). A publish waits for JetStream's PubAck and carries
the event id as `Nats-Msg-Id`, so a publish sent again after a lost confirm is
dropped by the server. Attempts are the server's `num_delivered`; a retry is a
NAK with the backoff as its delay; dead letters go to the book's dead-letter
stream (see `letters`). The client reconnects by itself; consumers ask for their
events again and unconfirmed publishes are sent again.

URL: `nats://[user:password@]host[:port]` with optional parameters: `ack_wait`
(seconds, 30), `prefetch` (events a consumer asks for ahead, 100),
`max_ack_pending` (events a handler's consumer may have unacked across all
processes, 10000), `publish_timeout` (seconds, 30), `connect_timeout` (seconds,
3), `duplicate_window` (seconds, 120; for new streams), `replicas` (1; for new
streams in a cluster).
"""

from .broker import NatsBroker
from .settings import NatsSettings

__all__ = ["NatsBroker", "NatsSettings"]
