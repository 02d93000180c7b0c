"""A module applied several times in one forward: statistics marked `each_call` are recorded at every call, as
name, name.call2, name.call3, ... with that call's values; the others once, at the first call."""
import pytest
import torch
from torch import nn

from bnexp.instrument.hooks import ForwardHooks


class ThreeCalls(nn.Module):
    """One ReLU applied to three different pre-activations, then one linear layer applied twice."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        hidden = self.relu(x) + self.relu(x - 10.0) + self.relu(x + 5.0)
        return self.head(hidden) + self.head(torch.zeros_like(hidden))


def test_each_call_statistics_are_named_by_call_and_others_taken_once():
    recorded = {}

    def record(keys, values):
        recorded.update(zip(keys, values.tolist()))

    model = ThreeCalls()
    hooks = ForwardHooks(model, record)
    x = torch.arange(8.0).view(2, 4) - 6  # -6 .. 1: the largest pre-activation is 1, then 1 - 10, then 1 + 5
    for _forward in range(2):  # the call count starts again at every forward
        recorded.clear()
        hooks.arm()
        model(x)
        hooks.disarm()
        assert recorded["act/relu/preact_max"] == pytest.approx(1.0)
        assert recorded["act/relu.call2/preact_max"] == pytest.approx(-9.0)
        assert recorded["act/relu.call3/preact_max"] == pytest.approx(6.0)
        # channels' largest inputs: [-2, -1, 0, 1], all below 0, all above 0
        assert recorded["act/relu/dead_frac"] == 0.75
        assert recorded["act/relu.call2/dead_frac"] == 1.0 and recorded["act/relu.call3/dead_frac"] == 0.0
        # the head at its first call only (its second input is all zeros)
        assert not any(key.startswith("act/head.call") for key in recorded)
        assert recorded["act/head/in_zero_frac"] == pytest.approx(0.25)  # the sum is 0 at x = -6 and -5 only
