import pytest

import eventbook as eb
from eventbook.brokers import from_url
from tests.conftest import Customer


class Order(eb.Event):
    sku: str


def test_topic_names_are_checked() -> None:
    book = eb.EventBook("shop")
    with pytest.raises(eb.ConfigurationError, match="invalid topic name"):
        book.topic("customer signup", Customer)
    with pytest.raises(eb.ConfigurationError, match="eventbook's"):
        book.topic("_internal", Customer)
    assert book.topic("customer.signup", Customer) is book.topic("customer.signup", Customer)
    with pytest.raises(eb.ConfigurationError, match="another type"):
        book.topic("customer.signup", Order)


def test_handler_with_the_wrong_parameter_type_is_refused_when_decorated() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    with pytest.raises(
        eb.HandlerSignatureError, match=r"takes Order, but the topic carries Customer"
    ):

        @eb.sub(signup)
        def on_signup(order: Order) -> None: ...

    with pytest.raises(eb.HandlerSignatureError, match="takes Order"):

        class BankService:
            @eb.sub(signup)
            def create_account(self, order: Order) -> None: ...


def test_handler_needing_more_than_the_payload_is_refused() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    with pytest.raises(eb.HandlerSignatureError, match="one argument"):

        @eb.sub(signup)
        def on_signup(customer: Customer, extra: int) -> None: ...


def test_compatible_annotations_are_accepted() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)

    @eb.sub(signup)
    def base_class(event: eb.Event) -> None: ...

    @eb.sub(signup)
    def optional(customer: Customer | None) -> None: ...

    @eb.sub(signup)
    def unannotated(customer) -> None:  # type: ignore[no-untyped-def]
        ...

    @eb.sub(signup)
    def no_payload() -> None: ...

    assert {"base_class", "optional", "unannotated", "no_payload"} <= set(book.services)


def test_plain_function_registers_as_a_one_function_service() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)
    update = book.topic("customer.update", Customer)

    @eb.sub(signup)
    @eb.sub(update)
    def notify(customer: Customer) -> None: ...

    service = book.services["notify"]
    assert [(name, sub.topic.name) for name, sub in service.subscriptions] == [
        ("notify", "customer.update"),
        ("notify", "customer.signup"),
    ]


def test_service_names_are_unique() -> None:
    book = eb.EventBook("shop")

    @book.service
    class MailService: ...

    with pytest.raises(eb.ConfigurationError, match="already has a service"):
        book.service(MailService())
    book.service(MailService(), name="MailService2")
    assert set(book.services) == {"MailService", "MailService2"}


def test_unknown_broker_scheme_names_the_supported_ones() -> None:
    with pytest.raises(eb.UnknownBrokerError, match=r"supported schemes are .*memory://"):
        from_url("kafka://user:secret@host:9092", "shop")
    with pytest.raises(eb.UnknownBrokerError) as info:
        from_url("kafka://user:secret@host:9092", "shop")
    assert "secret" not in str(info.value)


def test_service_that_needs_arguments_says_how_to_register_it() -> None:
    book = eb.EventBook("shop")
    signup = book.topic("customer.signup", Customer)

    @book.service
    class MailService:
        def __init__(self, smtp: str) -> None:
            self.smtp = smtp

        @eb.sub(signup)
        def send(self, customer: Customer) -> None: ...

    with pytest.raises(eb.ConfigurationError, match=r"register an instance instead"), book.start():
        pass
