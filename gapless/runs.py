"""What one run is and what it yields: the replay request to make, and the batches its lines become.

A replay *run* is one HTTP request: ``[start, request_end)`` in local (arrival) time, where
``request_end = claim_end + 1 minute`` because the sample stamped at a range's end is only emitted when
the next event arrives; a live run is one websocket connection (the recorder describes it with a
:class:`ReplayRequest` too). :class:`gapless.ingest.RunParser` turns its lines into :class:`Batch` es.
"""
from dataclasses import dataclass, field

from .timeutil import MINUTE_US, iso


@dataclass(frozen=True)
class Claim:
    """A coverage statement: ``[start, end)`` of one stream from one source is stored.

    ``segment`` identifies one continuous piece of one download run or live connection; claims
    for the same (segment, stream) replace each other, so a segment's end can grow batch by batch.
    """

    exchange: str
    symbol: str
    data_type: str
    source: str
    segment: str
    start: int
    end: int
    end_reason: str = None
    is_open: bool = False
    owner: str = None  # "host:pid" of the live recorder that writes an open segment
    limit_end: int = None  # the end this segment's run could have claimed (replay: the request's claim end)
    sealed_until: int = None  # local time up to which the run delivered every line (None: unknown)


@dataclass(frozen=True)
class ReplayRequest:
    """One replay run to make: streams = symbols x data types, ``[start, claim_end + 1 minute)``."""

    exchange: str
    symbols: tuple
    data_types: tuple
    start: int
    claim_end: int
    skip_before: tuple = ()  # ((symbol, data_type, us), ...): rows older than this are already stored
    attempt: int = 1
    claim_start: int = None  # where claims may begin (None: at ``start``); ``start`` may look behind it
    anchored: bool = False  # history is known continuous through ``claim_start`` (see gapless.claims)
    known: tuple = ()  # ((symbol, data_type), ...) whose own replay coverage reaches ``claim_start``
    proven_until: int = None  # history is proven available up to here (local time); None: all of the run
    fresh: bool = False  # asked with a filter set of its own: tardis-machine's cache cannot answer it
    past_edge: bool = False  # reaches past where history is expected to end: a refusal there is its end
    settled: tuple = ()  # ((local minute, verdict), ...) an earlier run of the same filter set settled
    holes: tuple = ()  # ((disconnect, next line), ...) local times: holes in tardis' recording earlier runs found
    pairs: tuple = ()  # ((symbol, data_type), ...) exactly, when not every symbol x data type (a live connection)

    @property
    def claim_from(self):
        """Where this run's claims may begin (the wanted start; the request itself may start earlier)."""
        return self.start if self.claim_start is None else self.claim_start

    @property
    def request_end(self):
        """The ``to`` sent to tardis-machine: one minute past what is claimed."""
        return self.claim_end + MINUTE_US

    @property
    def streams(self):
        """``(symbol, data_type)`` pairs this run covers."""
        return list(self.pairs) if self.pairs else [(s, d) for s in self.symbols for d in self.data_types]

    def describe(self):
        """Short human description (no API key)."""
        return "%s %s %s [%s, %s)" % (self.exchange, ",".join(self.symbols), ",".join(self.data_types),
                                      iso(self.start), iso(self.claim_end))


@dataclass
class Batch:
    """Rows and the coverage they complete, to be written in one transaction."""

    rows: dict
    claims: list
    lines: int = 0
    messages: int = 0
    malformed: int = 0
    errors: int = 0
    progress_us: int = 0
    disconnects: int = 0
    clock_steps: int = 0
    samples: list = field(default_factory=list)
    unclaimed: list = field(default_factory=list)  # complete runs: (symbol, data_type, start, end, reason)
    # replay: local minutes before ``progress_us`` in which no line at all arrived (new in this batch): the
    # cached EMPTY answer of a minute asked too early looks exactly like that (see gapless.silence)
    silent: list = field(default_factory=list)
    settled: list = field(default_factory=list)  # [(silent minute, verdict)] settled (gapless.silence)
    holes: list = field(default_factory=list)  # [(disconnect, next line)] closed holes in tardis' recording found
