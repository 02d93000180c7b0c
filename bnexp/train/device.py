"""Which device a run trains on, and which device features (bf16 autocast, channels_last) it turns on there.

The trainer and scripts/bench_train.py both ask here, so that a benchmark times the step a run would take."""
from __future__ import annotations

import torch


def resolve_device(requested: str) -> torch.device:
    # a CUDA device that is not there was refused with the config (config_schema's device check)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def device_feature_enabled(setting: str | bool, on_cuda: bool) -> bool:
    """train.amp / train.channels_last (auto, true or false: the schema allows no other value): `auto` turns the
    feature on for CUDA only (on the CPU bf16 autocast and channels_last are slower, not faster); true / false
    force it on any device (true on the CPU is how the tests exercise the CUDA code path)."""
    return on_cuda if setting == "auto" else setting
