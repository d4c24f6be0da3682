"""Pure decisions of the queue package: where a document lives, fair shares, error classes."""

from __future__ import annotations

import pytest

from control_plane.queue.documents import DocumentError, DocumentLocation, locate, safe_url
from control_plane.queue.environments import fair_shares
from control_plane.queue.store import is_transient_sqlstate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("https://x.test/a.pdf?sig=1", DocumentLocation("http", "https://x.test/a.pdf?sig=1")),
        ("HTTP://x.test/a.pdf", DocumentLocation("http", "HTTP://x.test/a.pdf")),
        ("file:///srv/docs/a.pdf", DocumentLocation("file", "file:///srv/docs/a.pdf")),
        ("actes/2024/a.pdf", DocumentLocation("storage", "2024/a.pdf", "actes")),
        ("/index/a.pdf", DocumentLocation("storage", "a.pdf", "index")),
    ],
)
def test_locate(path: str, expected: DocumentLocation) -> None:
    assert locate(path) == expected


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "empty storage_path"),
        ("ftp://x/a.pdf", "unsupported storage_path scheme 'ftp'"),
        ("a.pdf", "is not a URL nor bucket/path"),
        ("bucket/", "is not a URL nor bucket/path"),
    ],
)
def test_locate_refuses(path: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        locate(path)


def test_safe_url_drops_credentials_and_query() -> None:
    assert safe_url("https://u:pw@x.test:8443/a.pdf?token=abc#f") == "https://x.test:8443/a.pdf"


@pytest.mark.parametrize(
    ("limit", "names", "start", "expected"),
    [
        (6, ["dev", "staging", "prod"], 0, [("dev", 2), ("staging", 2), ("prod", 2)]),
        (7, ["dev", "staging", "prod"], 0, [("dev", 3), ("staging", 2), ("prod", 2)]),
        (7, ["dev", "staging", "prod"], 1, [("staging", 3), ("prod", 2), ("dev", 2)]),
        (1, ["dev", "staging", "prod"], 2, [("prod", 1)]),
        (2, ["dev", "staging", "prod"], 2, [("prod", 1), ("dev", 1)]),
        (5, ["dev"], 3, [("dev", 5)]),
        (0, ["dev"], 0, []),
        (3, [], 0, []),
    ],
)
def test_fair_shares(
    limit: int, names: list[str], start: int, expected: list[tuple[str, int]]
) -> None:
    assert fair_shares(limit, names, start) == expected


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (None, True),
        ("", True),
        ("08006", True),
        ("57P01", True),
        ("40001", True),
        ("40P01", True),
        ("53300", True),
        ("57014", True),
        ("PGRST001", True),
        ("503", True),
        ("429", True),
        ("P0001", False),
        ("23505", False),
        ("22P02", False),
        ("42883", False),
        ("PGRST202", False),
        ("PGRST301", False),
        ("404", False),
        ("400", False),
    ],
)
def test_is_transient_sqlstate(code: str | None, transient: bool) -> None:
    assert is_transient_sqlstate(code) is transient
