"""The log window fills at exactly its size, whatever the size (log_every can be in the hundreds), and its record
gives the window's first step, epoch and lr with the mean of its losses."""
import pytest
import torch

from bnexp.instrument import LossCurve
from bnexp.train.step import LogWindow


@pytest.mark.parametrize("size", [1, 3, 300, 1000])
def test_a_window_is_full_after_exactly_its_size_in_steps(size):
    window = LogWindow(size, torch.device("cpu"), steps_per_epoch=4000, loss_factor=1e9, loss_curve=LossCurve())
    for window_index in range(2):
        first = window_index * size + 7
        assert window.empty and not window.full
        for step in range(first, first + size):
            assert not window.full
            window.add(step, torch.tensor(float(step % 5)), lr=0.5 / (1 + step))
            assert not window.empty
        assert window.full
        readback = window.close()
        losses = [float(step % 5) for step in range(first, first + size)]
        (record,) = readback.records
        assert record["step"] == first and record["epoch"] == pytest.approx(first / 4000)
        assert record["train/lr"] == pytest.approx(0.5 / (1 + first))
        assert record["train/loss"] == pytest.approx(sum(losses) / size) == readback.loss
        assert readback.diverged_step is None
