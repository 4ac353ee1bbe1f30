"""`book.start()`: one object that runs a book as `async with` or, from sync code, `with`."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import redact

if TYPE_CHECKING:
    from .book import EventBook
    from .clock import Clock

log = logging.getLogger("eventbook")


class Running:
    """A started book. Leaving it stops consuming and drains in-flight work.

    In sync code (`with`), the book runs on an event loop in a background thread,
    so plain functions can publish (`book.emit`) and sync handlers run in worker
    threads, without the caller writing any asyncio.
    """

    def __init__(
        self,
        book: EventBook,
        url: str,
        services: Sequence[str] | None,
        drain_timeout: float,
        store: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.book = book
        self.url = url
        self.services = services
        self.drain_timeout = drain_timeout
        self.store = store
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> EventBook:
        await self.book._open(self.url, self.services, self.store, self.clock)
        names = self.book._selected_names(self.services)
        log.info(
            "%s: started on %s, running %s",
            self.book.name,
            redact(self.url),
            ", ".join(names) if names else "no services (publishing only)",
        )
        return self.book

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.book._close(self.drain_timeout)
        log.info("%s: stopped on %s", self.book.name, redact(self.url))

    def __enter__(self) -> EventBook:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"eventbook-{self.book.name}", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            return asyncio.run_coroutine_threadsafe(self.__aenter__(), loop).result()
        except BaseException:
            self._stop_loop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None
        try:
            asyncio.run_coroutine_threadsafe(self.__aexit__(exc_type, exc, tb), self._loop).result()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._thread = None
