import eventbook


def test_every_public_name_imports() -> None:
    assert eventbook.__all__ == sorted(eventbook.__all__)
    for name in eventbook.__all__:
        assert getattr(eventbook, name) is not None, name


def test_public_api_is_the_documented_one() -> None:
    documented = {"Event", "EventBook", "pub", "sub", "Topic", "Backoff", "Envelope"}
    assert documented <= set(eventbook.__all__)


def test_errors_share_one_base() -> None:
    for name in eventbook.__all__:
        obj = getattr(eventbook, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, eventbook.EventbookError), name
