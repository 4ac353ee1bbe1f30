"""`amqp://user:password@host:5672/vhost`: RabbitMQ (3.10+), on quorum queues (aio-pika).

The channel mapping is a public contract (other programs rely on it):

* the book's events go to a durable **topic exchange named after the book**, with
  the topic's name as routing key; each is the CloudEvent's JSON, content type
  `application/cloudevents+json`, `message_id` the event id, persistent;
* each consumer group (a handler, `Service.method`) has a durable **quorum queue
  `<book>.<group>`** bound to the exchange with each of its topics; replicas of a
  service consume the same queue;
* dead letters wait in the quorum queue **`<book>.dead-letters`** (see `letters`);
* request/reply answers go to `_reply.<id>` topics, each bound to an exclusive,
  auto-deleted queue `<book>._reply.<id>` of the requesting process.

Attempts are the queue's own count (`x-delivery-count`, trusted only on a delivery
the broker flags `redelivered`). A retry holds the event unacknowledged for its
backoff, then rejects it back to the queue, which counts the failed try; while it
waits, its handler takes other events. Publishes are mandatory and confirmed, and
retried with the same message id across reconnections (so one may arrive twice);
consumers consume again once the client has reconnected.

URL parameters: `prefetch` (unsettled events a consumer may hold beyond its
handler's concurrency, 20), `publish_timeout` (seconds a publish is retried until
confirmed, 30), `connect_timeout` (5), `reconnect` (seconds between reconnection
attempts, 1), `delivery_limit` (the queues' `x-delivery-limit`, 100); `heartbeat`
and `name` go to the client as they are.
"""

from .broker import RabbitBroker
from .settings import RabbitSettings

__all__ = ["RabbitBroker", "RabbitSettings"]
