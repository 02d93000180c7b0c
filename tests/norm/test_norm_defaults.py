"""Built with nn.BatchNorm2d's arguments alone, the layer is nn.BatchNorm2d: the same defaults, the same buffers
after training steps, and the same buffers after `reset_running_stats()`."""
import pytest
import torch
from torch import nn

from bnexp.norm import BatchNorm2d


def test_the_defaults_are_nn_batchnorm2ds():
    ours, theirs = BatchNorm2d(6), nn.BatchNorm2d(6)
    for name in ("eps", "momentum", "affine", "track_running_stats", "num_features"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.stat_groups == 6 and ours.backend == "auto"
    for name, buffer in theirs.named_buffers():
        assert torch.equal(getattr(ours, name), buffer), name


@pytest.mark.parametrize("stat_groups", [None, 2])
def test_training_with_the_defaults_then_resetting_matches_nn_batchnorm2d(stat_groups):
    """Per-channel: nn.BatchNorm2d itself is the oracle. Grouped: reset must give the same fresh buffers."""
    generator = torch.Generator().manual_seed(0)
    ours = BatchNorm2d(6, stat_groups=stat_groups, dtype=torch.float64)
    theirs = nn.BatchNorm2d(6, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(4, 6, 3, 3, generator=generator, dtype=torch.float64) * 3 + 2
        ours(x)
        theirs(x)
    assert int(ours.num_batches_tracked) == 3
    if stat_groups is None:
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-12, atol=0)
    assert not torch.equal(ours.running_var, torch.ones_like(ours.running_var))
    ours.reset_running_stats()
    theirs.reset_running_stats()
    assert torch.equal(ours.running_mean, torch.zeros_like(ours.running_mean))
    assert torch.equal(ours.running_var, torch.ones_like(ours.running_var))
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 0
