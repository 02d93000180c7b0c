"""Shared pytest setup.

Triton decides at decoration time whether a kernel runs compiled or interpreted,
so TRITON_INTERPRET must be set before any bnexp.norm.triton_* module is imported.
On a machine without CUDA the kernels can only run in the interpreter.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
