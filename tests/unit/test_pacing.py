"""Pure logic of the beyond-the-seed strategies and the feed's look-ahead, as tables."""

from __future__ import annotations

import pytest

from control_plane.allocation import compute_allocation
from control_plane.config import load_settings
from control_plane.pacing import (
    MAX_WEIGHT_RATIO,
    allocation_options,
    ewma,
    lent_types,
    lookahead_for,
    weights_from,
)
from control_plane.scheduler.service import feed_wants

pytestmark = pytest.mark.unit

M11 = {"index": 1, "acte": 1}


@pytest.mark.parametrize(
    ("previous", "sample", "alpha", "expected"),
    [
        (None, 3.0, 0.2, 3.0),  # first sample taken as is
        (float("nan"), 3.0, 0.2, 3.0),  # a corrupt figure is replaced
        (1.0, 2.0, 0.2, 1.2),
        (1.0, 2.0, 1.0, 2.0),  # alpha 1: only the last sample counts
        (4.0, 0.0, 0.5, 2.0),
    ],
)
def test_ewma(previous: float | None, sample: float, alpha: float, expected: float) -> None:
    assert ewma(previous, sample, alpha) == pytest.approx(expected)


@pytest.mark.parametrize("alpha", [0, -0.1, 1.5])
def test_ewma_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        ewma(1.0, 2.0, alpha)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, None),
        ({"index": "1.0", "index:n": "5"}, None),  # acte never seen: plain count rule
        ({"index": "1.0", "index:n": "5", "acte": "4.0", "acte:n": "2"}, None),  # too few
        ({"index": "1.0", "index:n": "3", "acte": "4.0", "acte:n": "3"}, {"index": 1, "acte": 4}),
        ({"index": "2.0", "index:n": "9", "acte": "1.0", "acte:n": "9"}, {"index": 2, "acte": 1}),
        (
            {"index": "0.1", "index:n": "9", "acte": "100", "acte:n": "9"},
            {"index": 1, "acte": MAX_WEIGHT_RATIO},
        ),  # capped
        ({"index": "0", "index:n": "9", "acte": "1", "acte:n": "9"}, None),
        ({"index": "x", "index:n": "9", "acte": "1", "acte:n": "9"}, None),
        ({"index": "inf", "index:n": "9", "acte": "1", "acte:n": "9"}, None),
    ],
)
def test_weights_from(raw: dict[str, str], expected: dict[str, float] | None) -> None:
    got = weights_from(raw)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("env", "weights", "previous", "expected"),
    [
        (
            {},
            {"index": 1, "acte": 4},
            {"index": 3, "acte": 1},  # defaults: lend + hysteresis
            {"lend_idle": True, "previous": {"index": 3, "acte": 1}, "hysteresis": 0.25},
        ),
        ({"ocr_allocation_weighting": "time"}, None, None, {}),  # no durations yet
        (
            {"ocr_allocation_weighting": "time"},
            {"index": 1, "acte": 4},
            None,
            {"weights": {"index": 1, "acte": 4}},
        ),
        ({"ocr_allocation_weighting": "count"}, {"index": 1, "acte": 4}, None, {}),
        ({"ocr_allocation_lend_idle": True}, None, None, {"lend_idle": True}),
        ({"ocr_allocation_hysteresis": 0.5}, None, None, {}),  # nothing to hold on to yet
        (
            {"ocr_allocation_hysteresis": 0.5},
            None,
            {"index": 3, "acte": 1},
            {"previous": {"index": 3, "acte": 1}, "hysteresis": 0.5},
        ),
    ],
)
def test_allocation_options(
    env: dict[str, object],
    weights: dict[str, float] | None,
    previous: dict[str, int] | None,
    expected: dict[str, object],
) -> None:
    plain = {"ocr_allocation_lend_idle": False, "ocr_allocation_hysteresis": 0.0} if env else {}
    settings = load_settings(require_environment=False, **{**plain, **env})
    assert allocation_options(settings, weights, previous) == expected


def test_options_change_the_split_as_measured() -> None:
    """The options reach compute_allocation: 40 index / 10 slow actes."""
    queue = {"index": 40, "acte": 10}
    plain = load_settings(require_environment=False, ocr_allocation_weighting="count")
    timed = load_settings(require_environment=False, ocr_allocation_weighting="time")
    weights = {"index": 1.0, "acte": 4.0}
    assert compute_allocation(queue, 4, M11, **allocation_options(plain, weights, None)) == {
        "index": 3,
        "acte": 1,
    }
    assert compute_allocation(queue, 4, M11, **allocation_options(timed, weights, None)) == {
        "index": 2,
        "acte": 2,
    }


@pytest.mark.parametrize(
    ("allocation", "minimums", "expected"),
    [
        (None, M11, []),
        ({"index": 3, "acte": 1}, M11, []),
        ({"index": 4, "acte": 0}, M11, ["acte"]),
        ({"index": 0, "acte": 4}, M11, ["index"]),
        ({"index": 4, "acte": 0}, {"index": 0, "acte": 0}, []),  # no minimum: nothing lent
    ],
)
def test_lent_types(
    allocation: dict[str, int] | None, minimums: dict[str, int], expected: list[str]
) -> None:
    assert lent_types(allocation, minimums) == expected


@pytest.mark.parametrize(
    ("allocation", "lookahead", "expected"),
    [
        (None, 1, {}),  # before the first rebalance: no look-ahead
        ({"index": 3, "acte": 1}, 1, {"index": 1, "acte": 1}),
        ({"index": 4, "acte": 0}, 2, {"index": 2, "acte": 0}),  # no slots: nothing ahead
        ({"index": 2, "acte": 2}, 0, {"index": 0, "acte": 0}),
    ],
)
def test_lookahead_for(
    allocation: dict[str, int] | None, lookahead: int, expected: dict[str, int]
) -> None:
    assert lookahead_for(allocation, lookahead) == expected


@pytest.mark.parametrize(
    ("free", "enqueued", "ahead", "expected"),
    [
        ({"index": 2, "acte": 0}, {}, None, {"index": 2, "acte": 0}),  # the seed's feed
        ({"index": 2, "acte": 0}, {"index": 1}, None, {"index": 1, "acte": 0}),
        ({"index": 0, "acte": 0}, {}, {"index": 1, "acte": 1}, {"index": 1, "acte": 1}),
        # a look-ahead message already waits (queued or in a thread): nothing more
        (
            {"index": 0, "acte": 0},
            {"index": 1, "acte": 1},
            {"index": 1, "acte": 1},
            {"index": 0, "acte": 0},
        ),
        ({"index": 1, "acte": 0}, {"index": 1}, {"index": 1, "acte": 0}, {"index": 1, "acte": 0}),
        ({"index": 0, "acte": 0}, {"index": 5}, {"index": 1}, {"index": 0, "acte": 0}),
    ],
)
def test_feed_wants_with_lookahead(
    free: dict[str, int],
    enqueued: dict[str, int],
    ahead: dict[str, int] | None,
    expected: dict[str, int],
) -> None:
    assert feed_wants(free, enqueued, ahead) == expected
