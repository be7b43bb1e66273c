"""Thread settings, decided per workload rather than left to chance.

The toy model's ops are a few microseconds each. On a 2-core machine two threads saved little
when idle but made a step several times slower as soon as one other process was busy, because
OpenMP's spinning threads fight over the second core; OMP_WAIT_POLICY=PASSIVE fixed that but
cost more when idle (the numbers: bench/README.md, `threads.py`). One intra-op thread never
enters an OpenMP parallel region, so it is immune to the wait policy: the toy uses one.
"""

import torch

WORKLOAD_THREADS = {"toy": 1}


def configure_threads(requested: int, workload: str) -> int:
    """Set torch's intra-op threads: `requested` if > 0, else the workload's measured choice."""
    threads = requested or WORKLOAD_THREADS.get(workload, torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads
