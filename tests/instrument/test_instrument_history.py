"""The gradient-norm history's first-over-last-layer ratio, at the last measured step: a number while both norms
are finite and the last layer's is positive, None otherwise (a network whose gradient died has a last norm of 0)."""
import math

import pytest

from bnexp.instrument.history import GradNormHistory


@pytest.mark.parametrize("first, last, expected", [(2.0, 0.5, 4.0), (0.0, 3.0, 0.0), (2.0, 0.0, None),
                                                   (math.inf, 1.0, None), (1.0, math.nan, None)])
def test_the_first_over_last_layer_ratio_at_the_last_step(first, last, expected):
    history = GradNormHistory(["stem.conv", "block.conv", "head.linear"])
    history.add({"step": 0, "grad_norm/stem.conv": 1.0, "grad_norm/head.linear": 1.0})
    history.add({"step": 5, "grad_norm/stem.conv": first, "grad_norm/block.conv": 7.0, "grad_norm/head.linear": last})
    assert history.summary()["grad_norm_ratio_first_last"] == expected
    assert history.summary()["init_grad_norms"] == {"stem.conv": 1.0, "head.linear": 1.0}
