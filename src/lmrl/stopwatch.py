"""Wall-clock seconds per named stage, for the `time/<stage>_seconds` metrics."""

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stopwatch:
    """`with clock("backward"):` adds the block's seconds to that stage, so a stage entered once
    per micro-batch and pass reports its total; stages may nest (the step encloses the rest)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        """{"time/<stage>_seconds": total}, in the order the stages first ended."""
        return {f"time/{stage}_seconds": s for stage, s in self.seconds.items()}
