"""Thread settings, decided per workload rather than left to chance.

The toy model's ops are a few microseconds each: splitting them across threads costs more than
it saves, and with OpenMP's default spin-waiting two threads ran a toy step 60x slower on these
2-core machines. One intra-op thread never enters an OpenMP parallel region, which sidesteps the
spin-wait policy entirely. Measured by bench/threads.py.
"""

import torch

WORKLOAD_THREADS = {"toy": 1}


def configure_threads(requested: int, workload: str) -> int:
    """Set torch's intra-op threads: `requested` if > 0, else the workload's measured choice."""
    threads = requested or WORKLOAD_THREADS.get(workload, torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads
