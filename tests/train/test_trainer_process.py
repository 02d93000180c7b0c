"""The run's process around the loop: which device `device=` names, which exception each stop signal raises, and
the summary of a run that fails before it trains."""
import json
import os
import signal

import pytest
import torch

from bnexp.train.device import resolve_device
from bnexp.train.run import RunInterrupted, StopSignals, train
from tests.helpers import TINY_RUN, compose_config


@pytest.mark.parametrize("cuda_available", [False, True])
def test_auto_picks_cuda_when_there_is_one_and_a_named_device_is_kept(monkeypatch, cuda_available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert resolve_device("auto") == torch.device("cuda" if cuda_available else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, RunInterrupted), (signal.SIGINT, KeyboardInterrupt)])
def test_each_stop_signal_raises_its_exception_or_waits_while_held(signum, raised):
    handler_before = signal.getsignal(signum)
    with StopSignals() as stop:
        with pytest.raises(raised):
            os.kill(os.getpid(), signum)  # Python runs the handler right after the call returns
        with stop.held():
            os.kill(os.getpid(), signum)
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal while held: the first one is kept
        assert isinstance(stop.pending, raised)
    assert signal.getsignal(signum) == handler_before


def test_a_run_that_fails_before_training_records_no_progress(tmp_path):
    with pytest.raises(ValueError):
        train(compose_config(["+variant=no_bn", *TINY_RUN, "train.epochs=0"]), str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "train.epochs=0" in summary["error"]
    assert (summary["epochs_done"], summary["steps_done"]) == (0, 0)
    assert summary["final_test_acc"] is None and summary["best_test_acc"] is None
