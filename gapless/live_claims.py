"""Which of a live segment's claims a recorder's commit writes.

Every commit makes a claim for each stream of the open segment, its end a little further on. Written every time,
a chain of 500 options upserts 500 coverage rows and leaves 500 dirty marks a second, for an end that matters
only where it passes the end of a minute: that is when the minute store and the publisher may take the minute as
final. So a claim is written when it is new, when its start, its end's minute, its end reason or its openness
changed, and at least every :data:`REFRESH_S` seconds (an open segment untouched for
:data:`~gapless.recorder.STALE_SEGMENT` seconds passes for a crashed recorder's). Claiming less than is stored is
always safe: the rows are there, the coverage that vouches for them follows within a few seconds.
"""
from .timeutil import MINUTE_US

REFRESH_S = 5.0


class ClaimWrites:
    """The claims of one recorder's segments as last written, and which of a commit's claims are due."""

    def __init__(self, refresh_s=REFRESH_S):
        self.refresh_s = refresh_s
        self._written = {}  # (segment, symbol, data_type) -> (state, monotonic time written)

    @staticmethod
    def _key(claim):
        return claim.segment, claim.symbol, claim.data_type

    @staticmethod
    def _state(claim):
        return claim.start, claim.end // MINUTE_US, claim.end_reason, claim.is_open

    def due(self, claims, now):
        """The claims to write at monotonic time ``now`` (see the module docstring)."""
        due = []
        for claim in claims:
            last = self._written.get(self._key(claim))
            if last is None or last[0] != self._state(claim) or now - last[1] >= self.refresh_s:
                due.append(claim)
        return due

    def written(self, claims, now):
        """``claims`` were committed at ``now``; a closed one is forgotten (its segment ended)."""
        for claim in claims:
            if claim.is_open:
                self._written[self._key(claim)] = (self._state(claim), now)
            else:
                self._written.pop(self._key(claim), None)
