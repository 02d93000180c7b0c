"""Shared pytest setup.

Triton decides when it decorates a kernel whether the kernel runs compiled or interpreted, so TRITON_INTERPRET
must be set before any bnexp.norm.triton_* module is imported. On a machine without CUDA the kernels can only run
in the interpreter, on CPU tensors: the kernel tests, the layer with backend='triton' and the trainer with
variant.backend=triton all run there. With CUDA they run compiled.

The tests mirror the package (tests/<package>/ checks bnexp/<package>/); what they share to import (the repository
root, a subprocess environment, the tiny run, fake run dirs) is in tests/helpers.py, and the programs some tests
start as subprocesses (a fake trainer, a kill at a chosen phase) are in tests/support/.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
