"""Small helpers several test files share (imported as `helpers`: pytest puts tests/ on the
path)."""

import torch

from lmrl.config import Config


def config_from(base: dict, **groups) -> Config:
    """A Config from {group: {field: value}} base settings with `groups` merged field by field."""
    merged = {k: dict(v) for k, v in base.items()}
    for k, v in groups.items():
        merged.setdefault(k, {}).update(v)
    return Config().replace(**merged)


class CountingPolicy(torch.nn.Module):
    """Wraps a policy and counts its sample calls (`samples`) and log-prob passes (`calls`)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.samples, self.calls = inner, 0, 0

    def prepare(self, prompts):
        return self.inner.prepare(prompts)

    @property
    def token_budget(self):
        return self.inner.token_budget

    def sample(self, *a, **k):
        self.samples += 1
        return self.inner.sample(*a, **k)

    def logprobs(self, *a, **k):
        self.calls += 1
        return self.inner.logprobs(*a, **k)
