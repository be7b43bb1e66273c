"""--async-rollouts: sample step k+1's batch while step k updates.

The seed: "inference dominates cost". Synchronous training alternates the two (sample, then
update); here a background thread collects the next batch (prompts, rollouts, rewards, Δ, the
reference's log-probs) with `sampler`, a copy of the policy, while the main thread runs the
update. The copy holds the weights from *before* the update it overlaps, so the batch trained
at step k+1 was sampled by θ_{k-1}, one update behind the θ_k it trains: lag 1. That is the
seed's old-policy ratio at work: the loss's π_old is the sampler's stored log-probs (the
batch's `logp_old`), not the current policy's, so r = π_θ / π_sampler ≠ 1 and clipping
corrects for the lag (train/rollout_lag logs it).

lag 0 (tests only): the same machinery with the sampler synchronised after each update and the
next batch collected then, which is synchronous training with the sampler's stored log-probs
as π_old (the same numbers up to float rounding: tests/test_async_rollouts.py).

Threads, not processes: torch's kernels release the GIL, so sampling and the update run on two
cores at once; each thread's ops use torch's intra-op threads, so `--threads 1` gives each its
own core on a 2-core machine (bench/README.md measures when it pays).

Checkpoints: the batch being collected is not saved. A checkpoint stores the sampling
generator as it was before that batch's draws (`TrainState.generator_resume_state`), so a
resumed run draws the same prompts and uniforms for it, sampled by the resumed weights (lag 0
for that one step).
"""

import copy
import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from lmrl.stopwatch import Stopwatch


class RolloutsAhead:
    def __init__(self, state, task, cfg, lag: int = 1) -> None:
        if lag not in (0, 1):
            raise ValueError(f"lag must be 0 or 1, got {lag}")
        self.task, self.cfg, self.lag = task, cfg, lag
        self.sampler = copy.deepcopy(state.policy).requires_grad_(False)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="lmrl-rollouts")
        self.pending: Future | None = None
        self.pending_clock: Stopwatch | None = None

    def sync(self, state) -> None:
        """The sampler's weights <- the policy's (no new tensors: copied in place)."""
        with torch.no_grad():
            for mine, theirs in zip(self.sampler.parameters(), state.policy.parameters(),
                                    strict=True):
                mine.copy_(theirs)

    def _collect(self, state, step: int, clock: Stopwatch):
        """The batch of step `step + 1`, collected by the sampler (`state` is read for the
        reference, the generator and the reward statistics, which the update does not touch)."""
        from lmrl.step import collect  # step.py imports this module

        view = dataclasses.replace(state, policy=self.sampler, step=step)
        return collect(view, self.task, self.cfg, clock, sampler_old=True)

    def next_batch(self, state, clock: Stopwatch):
        """Step state.step + 1's batch: the one collected ahead, or (the first step, after a
        resume, or lag 0) one collected now. With lag 1 it then starts collecting the batch
        after it, by the weights this step's update starts from."""
        waited = time.perf_counter()
        if self.pending is not None:
            batch, lag = self.pending.result(), self.lag
            clock.seconds.update(self.pending_clock.seconds)  # the thread's stage times
        else:
            self.sync(state)
            batch, lag = self._collect(state, state.step, clock), 0
        self.pending = None
        state.generator_resume_state = None
        batch.stats = {**batch.stats, "train/rollout_lag": float(lag),
                       "time/rollout_wait_seconds": time.perf_counter() - waited}
        if self.lag == 1:
            self.sync(state)
            state.generator_resume_state = state.generator.get_state()
            self.pending_clock = Stopwatch()
            self.pending = self.pool.submit(self._collect, state, state.step + 1,
                                            self.pending_clock)
        return batch

    def finish_pending(self) -> None:
        """Wait for the batch being collected (before anything it reads changes: the
        reference's refresh, an evaluation, a checkpoint). Its errors surface here."""
        if self.pending is not None:
            self.pending.exception()  # waits; raised at next_batch via result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
