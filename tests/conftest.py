"""Shared pytest setup.

Triton decides when it decorates a kernel whether the kernel runs compiled or interpreted, so TRITON_INTERPRET
must be set before any bnexp.norm.triton_* module is imported. On a machine without CUDA the kernels can only run
in the interpreter, on CPU tensors: the kernel tests, the layer with backend='triton' and the trainer with
variant.backend=triton all run there. With CUDA they run compiled.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
