"""`sqlite:///path.db`: the embedded durable broker; zero infrastructure, many processes.

One SQLite file in WAL mode holds an append-only event log and, per consumer group
(one per handler), a position in it plus the events it holds in flight (see
`store`). Replicas of a service (other processes on the same file) claim from the
same group, so they share its events. A consumer renews the leases of what it
holds; when it dies, its leases run out and the events are claimed again, their
attempt count (kept in the file, never in a header) one higher.

Durability: by default (`synchronous=NORMAL` in WAL mode) an acknowledged publish
survives a crash of any process; `?durability=full` also survives a power loss,
at the price of an fsync per commit.

URL parameters: `durability` (normal|full), `lease` (seconds, 30), `retention`
(seconds a consumed event is kept, 3600), `prefetch` (events a consumer claims at
once, 100), `poll` (seconds between checks for other processes' writes, 0.005).
"""

from .broker import SqliteBroker
from .settings import SqliteSettings

__all__ = ["SqliteBroker", "SqliteSettings"]
