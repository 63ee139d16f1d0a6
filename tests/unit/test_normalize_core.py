"""Small pieces of the normalizer: durations, host names, locating a field."""

from __future__ import annotations

import pytest

from meshagent.model.source import Provenance, RawResource
from meshagent.normalize.durations import parse_duration_ms
from meshagent.normalize.hosts import resolve_host
from meshagent.normalize.validate import locate


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1.5s", 1500),
        ("100ms", 100),
        ("1h", 3_600_000),
        ("1h30m", 5_400_000),
        ("0", 0),
        ("0s", 0),
        ("250us", 0),
        (".5s", 500),
        ("2m3.5s", 123_500),
    ],
)
def test_istio_durations_parse_to_whole_milliseconds(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "5", "-1s", "1 s", "1d", "s", "1.5.5s", "10sec"])
def test_invalid_durations_are_rejected(text: str) -> None:
    assert parse_duration_ms(text) is None


def test_short_names_resolve_and_others_stay() -> None:
    assert resolve_host("reviews", "prod", "cluster.local") == "reviews.prod.svc.cluster.local"
    assert resolve_host("reviews.prod", "x", "cluster.local") == "reviews.prod"
    assert resolve_host("*", "x", "cluster.local") == "*"
    assert resolve_host("*.example.com", "x", "cluster.local") == "*.example.com"


def test_locate_uses_the_longest_known_prefix() -> None:
    raw = RawResource(
        "files",
        "VirtualService",
        "networking.istio.io/v1",
        "",
        "a",
        {},
        Provenance("files", "dir/a.yaml:3"),
        {"spec": 7, "spec.http[0]": 9, "spec.http[0].route": 10},
    )
    assert locate(raw, "spec.http[0].route[2].weight") == "dir/a.yaml:10"
    assert locate(raw, "spec.http[1].timeout") == "dir/a.yaml:7"
    assert locate(raw, "metadata.name") == "dir/a.yaml:3"
    no_lines = RawResource(
        "consul", "ServiceEntry", "v", "", "a", {}, Provenance("consul", "consul index 42")
    )
    assert locate(no_lines, "spec.hosts") == "consul index 42"
