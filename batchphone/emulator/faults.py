"""Injected faults: latency, server errors, dropped connections, timeouts, lost answers.

Some faults leave the user store alone (``error_*``, ``html_502``, ``drop``, ``ignore_update``,
``unapplied_200``); the others run the call as usual, so an update is applied, and then spoil
its answer (``lost_answer``, ``timeout``, ``applied_500``, ``empty_200``, ``empty_object_200``).

Every draw is a hash of the seed, the request and how many times that same request was seen
before (assumed ``fault-replay``), not a shared random stream: a run replayed with the same seed
gets the same faults for the same calls even when concurrency reorders them.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, fields

__all__ = ["FaultDecision", "FaultKind", "FaultPicker", "Faults"]

_TWO_64 = float(2**64)


class FaultKind(enum.StrEnum):
    """What happens to one call instead of (or besides) its normal answer."""

    ERROR_500 = "error_500"
    ERROR_503 = "error_503"
    ERROR_520 = "error_520"
    ERROR_524 = "error_524"
    HTML_502 = "html_502"
    DROP = "drop"
    TIMEOUT = "timeout"
    LOST_ANSWER = "lost_answer"
    IGNORE_UPDATE = "ignore_update"
    # new kinds go last: the draw walks the kinds in this order, so a kind appended with rate 0
    # leaves every call's fault as it was, and with a rate it only takes calls that drew none
    APPLIED_500 = "applied_500"
    EMPTY_200 = "empty_200"
    EMPTY_OBJECT_200 = "empty_object_200"
    UNAPPLIED_200 = "unapplied_200"


#: The HTTP status a server-error fault answers with.
ERROR_STATUS = {
    FaultKind.ERROR_500: 500,
    FaultKind.ERROR_503: 503,
    FaultKind.ERROR_520: 520,
    FaultKind.ERROR_524: 524,
    FaultKind.HTML_502: 502,
}


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault rates (each the probability of that fault for one call) and latency in seconds.

    ``arrival_jitter`` delays each call by a random 0..J seconds before the budget counts it,
    as a CDN in front of the API would: arrivals then move against the client's sends. All zero
    by default. The rates together may not exceed 1; ``timeout_delay`` is how long a
    ``timeout`` answer is held (longer than any sane client timeout; a test may set it to a
    fraction of a second, as long as it is longer than its client's timeout).

    ``write_latency`` holds the answer of every write (update/phone, patch, patch/batch) that
    got past the rate limiter for that many more seconds, after the write was applied: a slow
    patch, apart from ``latency``. ``writes_only`` draws fault kinds for writes only: reads
    (load, search) then answer normally, with only ``latency`` and ``jitter``; the writes draw
    the same faults as without it.
    """

    seed: int = 0
    latency: float = 0.0
    jitter: float = 0.0
    arrival_jitter: float = 0.0
    error_500: float = 0.0
    error_503: float = 0.0
    error_520: float = 0.0
    error_524: float = 0.0
    html_502: float = 0.0
    drop: float = 0.0
    timeout: float = 0.0
    lost_answer: float = 0.0
    ignore_update: float = 0.0
    timeout_delay: float = 65.0
    applied_500: float = 0.0
    empty_200: float = 0.0
    empty_object_200: float = 0.0
    unapplied_200: float = 0.0
    write_latency: float = 0.0
    writes_only: bool = False

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "arrival_jitter", "timeout_delay", "write_latency"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more seconds")
        rates = self.rates()
        for kind, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{kind.value} must be a rate between 0 and 1")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError("the fault rates add up to more than 1")

    def rates(self) -> dict[FaultKind, float]:
        """Each fault kind's rate, in the order the draw walks them."""
        return {kind: float(getattr(self, kind.value)) for kind in FaultKind}

    @property
    def active(self) -> bool:
        """True when any fault or latency is set (else the emulator skips the draw)."""
        return any(getattr(self, f.name) for f in fields(self) if f.name not in _NOT_A_FAULT)


_NOT_A_FAULT = frozenset({"seed", "timeout_delay", "writes_only"})


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What the draw decided for one call: a fault (or none) and the latency to add first.

    ``latency`` includes ``arrival_delay``, the part drawn from ``Faults.arrival_jitter``;
    ``answer_delay`` (``Faults.write_latency``, writes only) is waited after the call ran.
    """

    kind: FaultKind | None
    latency: float
    arrival_delay: float = 0.0
    answer_delay: float = 0.0


NO_FAULT = FaultDecision(kind=None, latency=0.0)


class FaultPicker:
    """Draws the fault of each call from :class:`Faults` and the request's identity."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        #: computed once: the hot path asks on every call
        self.active = faults.active
        self._bounds: list[tuple[float, FaultKind]] = []
        total = 0.0
        for kind, rate in faults.rates().items():
            if rate > 0:
                total += rate
                self._bounds.append((total, kind))
        self._seen: dict[bytes, int] = {}
        self._seed = faults.seed.to_bytes(16, "big", signed=True)

    def pick(self, request_key: bytes, *, faulty: bool, write: bool = False) -> FaultDecision:
        """The decision for a request identified by ``request_key`` (method, path, query, body).

        ``faulty=False`` (calls outside the user endpoints) draws only the latency, and so does
        a read (``write=False``) when ``Faults.writes_only`` is set.
        """
        faults = self.faults
        if not self.active:
            return NO_FAULT
        # the identity is hashed first so that long bodies are not kept
        identity = hashlib.blake2b(request_key, digest_size=16, key=self._seed).digest()
        occurrence = self._seen.get(identity, 0)
        self._seen[identity] = occurrence + 1
        digest = hashlib.blake2b(identity + occurrence.to_bytes(8, "big"), digest_size=16).digest()
        u_fault = int.from_bytes(digest[:8], "big") / _TWO_64
        u_jitter = int.from_bytes(digest[8:], "big") / _TWO_64
        latency = faults.latency + faults.jitter * u_jitter
        arrival_delay = 0.0
        if faults.arrival_jitter:
            # a draw of its own: the other draws stay as they were without arrival jitter
            extra = hashlib.blake2b(digest, digest_size=8).digest()
            arrival_delay = faults.arrival_jitter * int.from_bytes(extra, "big") / _TWO_64
        kind = None
        if faulty and (write or not faults.writes_only):
            for bound, candidate in self._bounds:
                if u_fault < bound:
                    kind = candidate
                    break
        return FaultDecision(
            kind=kind,
            latency=latency + arrival_delay,
            arrival_delay=arrival_delay,
            answer_delay=faults.write_latency if write else 0.0,
        )
