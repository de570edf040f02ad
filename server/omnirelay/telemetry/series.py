"""Per-call counters and histograms kept as plain numbers, exposed through a prometheus_client collector.

prometheus_client's own Counter and Histogram take a lock for every increment (one per bucket
and one for the sum) and find a histogram's bucket by walking the bounds; its ``labels()``
lookup takes another. The gateway counts every call on its event loop thread, and /metrics is
rendered on that same thread, so none of that locking buys anything: here a call is a dict
lookup, a bisect and a few integer additions, and the library still does all the exposition
(``CounterMetricFamily``, ``HistogramMetricFamily``) at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class Histogram:
    """One label set's observations: a count per bucket (not cumulative), the sum."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        # The last slot is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value


class HistogramFamily:
    """A histogram metric and its label sets."""

    def __init__(self, name: str, documentation: str, labels: Labels, bounds: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = tuple(bounds)
        # The "le" label values as prometheus_client's own histograms spell them.
        self._edges = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._children: dict[Labels, Histogram] = {}

    def child(self, values: Labels) -> Histogram:
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = Histogram(self.bounds)
        return found

    def metric(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, h in list(self._children.items()):
            running = 0
            buckets: list[tuple[str, float]] = []
            for edge, count in zip(self._edges, h.counts, strict=True):
                running += count
                buckets.append((edge, float(running)))
            family.add_metric(list(values), buckets, h.total)
        return family


class Count:
    """One label set's counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class CounterFamily:
    """A counter metric and its label sets."""

    def __init__(self, name: str, documentation: str, labels: Labels) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self._children: dict[Labels, Count] = {}

    def child(self, values: Labels) -> Count:
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = Count()
        return found

    def inc(self, values: Labels, amount: float = 1.0) -> None:
        self.child(values).value += amount

    def metric(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, count in list(self._children.items()):
            family.add_metric(list(values), count.value)
        return family


class Families(Collector):
    """Yields the families it was given, each time Prometheus scrapes."""

    def __init__(self, *families: HistogramFamily | CounterFamily) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.metric()
