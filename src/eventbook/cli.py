"""The `eventbook` command line (typer + rich).

A user's mistake prints one clear line and exits 2; it never shows a traceback.
"""

from __future__ import annotations

import enum
import importlib
import logging
import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from .book import EventBook
from .errors import ConfigurationError, EventbookError

app = typer.Typer(
    name="eventbook",
    help="Typed events between Python services: run, inspect and demo eventbook books.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

#: The CLI's default broker when neither --broker nor EVENTBOOK_BROKER is given.
CLI_DEFAULT_BROKER = "memory://"

BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker", "-b", help="Broker URL; default $EVENTBOOK_BROKER, else " + CLI_DEFAULT_BROKER
    ),
]


def broker_url(given: str | None) -> str:
    """The broker a CLI command uses: --broker, else $EVENTBOOK_BROKER, else the CLI default."""
    return given or os.environ.get("EVENTBOOK_BROKER") or CLI_DEFAULT_BROKER


def load_book(target: str) -> EventBook:
    """Import `module:attribute` from the current directory, as uvicorn does.

    Raises:
        ConfigurationError: the target is malformed, does not import, or is no EventBook.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"expected MODULE:ATTRIBUTE (like app:book), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from None
    book = getattr(module, attr, None)
    if not isinstance(book, EventBook):
        raise ConfigurationError(f"{target!r} is not an EventBook (found {type(book).__name__})")
    return book


class Style(enum.StrEnum):
    choreography = "choreography"
    orchestration = "orchestration"
    both = "both"


@app.command()
def demo(
    style: Annotated[Style, typer.Option(help="Which sign-up to run.")] = Style.both,
    broker: BrokerOption = None,
) -> None:
    """Run the seed's sign-up (customer SELO) as choreography, orchestration, or both."""
    from . import demo as demo_module

    demo_module.run(style.value, broker_url(broker), console)


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="The book to run, as MODULE:ATTRIBUTE.")],
    broker: BrokerOption = None,
    service: Annotated[
        list[str] | None, typer.Option("--service", "-s", help="Run only this service.")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to let in-flight handlers finish on shutdown.")
    ] = 30.0,
) -> None:
    """Run a book's services until SIGINT or SIGTERM, then drain and exit 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    book = load_book(target)
    book.run(broker_url(broker), services=service or None, drain_timeout=drain_timeout)


def main() -> None:
    """Entry point of the `eventbook` script."""
    try:
        app()
    except EventbookError as exc:
        errors.print(f"[red]error:[/] {exc}", highlight=False)
        raise SystemExit(2) from None
