"""Byte counters: what one rank put into collectives, against what dense all-reduce would send.

Convention: "bytes sent" is the size of the tensors a rank hands to a collective (the message),
the same unit as the dense baseline (``numel * element_size`` of every gradient, per step). The
physical traffic of the collective algorithm is a different number: a ring all-reduce of ``n``
bytes moves about ``2 (W-1)/W * n`` bytes per rank, an all-gather of ``m`` bytes per rank moves
``(W-1) * m`` bytes into each rank. ``wire_bytes_total`` estimates that for ring algorithms.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CommunicationCounters"]


@dataclass
class CommunicationCounters:
    """Cumulative and last-step byte counters of one rank.

    ``compression_ratio`` = dense bytes / bytes sent (``inf`` before anything was sent).
    """

    steps: int = 0
    bytes_sent_total: int = 0
    dense_bytes_total: int = 0
    wire_bytes_total: float = 0.0
    bytes_sent_step: int = 0
    dense_bytes_step: int = 0
    _sent_open: int = 0
    _dense_open: int = 0

    def add(self, sent: int = 0, dense: int = 0, *, wire: float | None = None) -> None:
        """Count ``sent`` bytes handed to a collective and ``dense`` baseline bytes."""
        self._sent_open += int(sent)
        self._dense_open += int(dense)
        self.bytes_sent_total += int(sent)
        self.dense_bytes_total += int(dense)
        self.wire_bytes_total += float(sent if wire is None else wire)

    def end_step(self) -> None:
        """Close the current step: its totals become ``bytes_sent_step`` / ``dense_bytes_step``."""
        self.bytes_sent_step, self.dense_bytes_step = self._sent_open, self._dense_open
        self._sent_open = self._dense_open = 0
        self.steps += 1

    @property
    def compression_ratio(self) -> float:
        return self.dense_bytes_total / self.bytes_sent_total if self.bytes_sent_total else math.inf

    @property
    def step_compression_ratio(self) -> float:
        return self.dense_bytes_step / self.bytes_sent_step if self.bytes_sent_step else math.inf

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def summary(self) -> str:
        return (
            f"{self.steps} steps, sent {self.bytes_sent_total:,} B vs dense "
            f"{self.dense_bytes_total:,} B (x{self.compression_ratio:.1f})"
        )
