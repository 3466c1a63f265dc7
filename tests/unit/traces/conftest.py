from __future__ import annotations

from collections.abc import Iterator

import pytest

from geode.testing.spans import SpanTreeBuilder


@pytest.fixture
def builder() -> Iterator[SpanTreeBuilder]:
    made = SpanTreeBuilder()
    yield made
    made.shutdown()
