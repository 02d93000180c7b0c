"""Sharpness: the top eigenvalue of the training loss's Hessian with respect to the parameters, beside the stability
threshold of the optimizer and lr in use.

The field's measure of stability since Cohen et al. (2021), "Gradient Descent on Neural Networks Typically Occurs
at the Edge of Stability" (ICLR 2021, arXiv:2103.00065): gradient descent on a quadratic is unstable once the
sharpness exceeds 2/eta, and in training the sharpness rises to that threshold and then hovers there.

What is measured, every `instrument.sharpness_every` steps (step 0 included):

- the Hessian of the loss the training step takes, on one fixed batch drawn once from the training split (with the
  run's seed, without augmentation): train mode, so norm layers normalise with this batch's statistics, and the
  caller's loss function (the trainer passes the step's own, label smoothing included; bnexp/train/step.py);
- in fp32 without autocast: under train.amp the step's forward runs in bf16, and this is the fp32 loss at the same
  parameters (second derivatives of bf16 rounding would be noise);
- through the eager module, never the torch.compile'd one (compiled graphs do not take a double backward);
- by Lanczos iteration on Hessian-vector products, started from the last measurement's top eigenvector. The Ritz
  value never exceeds the true top eigenvalue (in exact arithmetic); `sharpness/residual`, ||Hv - lambda v|| /
  |lambda| of the returned pair (one more product), says how close it came: some eigenvalue of the Hessian lies
  within residual * |lambda| of it.

Weight decay is left out: it adds its coefficient (5e-4 in conf/optim/sgd.yaml) to the curvature the update sees,
negligible beside thresholds of 2/eta.

Side effects: none on the run. The forward runs on copies of the buffers (torch.func.functional_call), so running
statistics and num_batches_tracked are not updated; the products use torch.autograd.grad, so the parameters' .grad
are untouched; the start vector comes from a generator of its own, never the global random state.

Cost: one forward and a backward that keeps its graph (create_graph), then one double backward per Lanczos step
and one for the residual, all on that one graph. Host syncs: one per Lanczos step with a tolerance (to stop early),
else one per measurement (the small tridiagonal eigenproblem is solved on the host); none on other steps.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from bnexp.config.compose import instrument_setting
from bnexp.instrument.layers import unwrap_model

# forward -> the loss of the measurement batch computed through that forward (a module or a callable like one)
LossOfForward = Callable[[Callable[[Tensor], Tensor]], Tensor]


def stability_threshold(optimizer: torch.optim.Optimizer | None) -> float | None:
    """The largest sharpness at which the optimizer's update, at its current lr, is stable on a quadratic; None
    for an optimizer without one in terms of the plain Hessian.

    With PyTorch's SGD (buffer v <- beta v + (1 - dampening) g), linear stability on curvature a gives (Cohen et
    al. 2021, the appendix on momentum; the same follows from the characteristic polynomial of the update):
    - no momentum: 2 / eta;
    - heavy-ball momentum: (2 + 2 beta) / (eta (1 - dampening));
    - Nesterov momentum (dampening must be 0): (2 + 2 beta) / (eta (1 + 2 beta)).
    Adam and AdamW: None. Their threshold, 38/eta for beta1 = 0.9 (Cohen et al. 2022, "Adaptive Gradient Methods
    at the Edge of Stability", arXiv:2207.14484), bounds the preconditioned Hessian P^-1 H, not the Hessian this
    module measures, so no threshold is given for them.

    bnexp's parameter groups differ in weight decay only, so the first group's lr and momentum stand for all.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return None
    group = optimizer.param_groups[0]
    lr, momentum = float(group["lr"]), float(group.get("momentum", 0.0))
    dampening, nesterov = float(group.get("dampening", 0.0)), bool(group.get("nesterov", False))
    if lr <= 0:
        return None  # no step, no threshold (the schedule never reaches 0 before the last step)
    if momentum == 0:
        return 2 / lr
    if nesterov:
        return (2 + 2 * momentum) / (lr * (1 + 2 * momentum))
    return (2 + 2 * momentum) / (lr * (1 - dampening)) if dampening < 1 else None


class HessianOperator:
    """Hessian-vector products of the loss at the model's current parameters, all from one graph of the gradient.

    The loss is computed once, in train mode, on copies of the model's buffers; `matvec(v)` is one double backward
    through the kept graph. Vectors are flat, in the order of `params`."""

    def __init__(self, model: nn.Module, loss_of_forward: LossOfForward):
        self.params = [param for param in model.parameters() if param.requires_grad]
        # in-place running-statistic updates land in these copies: the model's buffers stay as they are
        buffer_copies = {name: buffer.clone() for name, buffer in model.named_buffers()}
        with torch.enable_grad():
            loss = loss_of_forward(lambda inputs: functional_call(model, buffer_copies, (inputs,)))
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        self.loss = loss.detach()
        # a gradient with no graph (a parameter the loss does not use) has zero second derivatives
        self._rows = [(index, grad) for index, grad in enumerate(grads) if grad is not None and grad.requires_grad]
        self.size = sum(param.numel() for param in self.params)
        if _has_once_differentiable_node([grad for _, grad in self._rows]):
            raise RuntimeError(
                "instrument.sharpness_every needs second derivatives through every layer, and a layer's backward "
                "cannot be differentiated again (an autograd Function marked once-differentiable); run with "
                "variant.backend=torch or instrument.sharpness_every=0")

    def matvec(self, vector: Tensor) -> Tensor:
        pieces = vector.split([param.numel() for param in self.params])
        products = torch.autograd.grad([grad for _, grad in self._rows], self.params,
                                       grad_outputs=[pieces[index].view_as(grad) for index, grad in self._rows],
                                       retain_graph=True, allow_unused=True)
        return torch.cat([(product if product is not None else torch.zeros_like(param)).reshape(-1)
                          for product, param in zip(products, self.params)])


def _has_once_differentiable_node(grads: list[Tensor]) -> bool:
    """Whether the gradients' graph holds the error node that a @once_differentiable backward leaves. It would
    not raise: it hangs off detached tensors, so a double backward to the parameters skips it and silently drops
    that layer's second-order terms."""
    stack, seen = [grad.grad_fn for grad in grads], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in ("Error", "DelayedError"):
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def lanczos_top_eigenpair(matvec: Callable[[Tensor], Tensor], start: Tensor, steps: int,
                          tolerance: float = 0.0) -> tuple[float, Tensor, int]:
    """(top eigenvalue, its unit Ritz vector, steps taken) of a symmetric operator, from at most `steps` Lanczos
    steps (one matvec each; at most the dimension) started from `start` (non-zero).

    With `tolerance` > 0 it stops once Lanczos' own residual estimate of the top pair, |beta_j s_j|, is at most
    tolerance x |top|: one host sync per step (a small eigenproblem on the host) buys fewer products. With 0 the loop
    stays on the device and the tridiagonal matrix comes to the host once, at the end.

    Full reorthogonalisation, done twice: without it fp32 Lanczos loses orthogonality and reports ghost copies of
    converged eigenvalues. A non-finite operator (a diverged run) gives NaN, and the start vector comes back."""
    size = start.numel()
    steps = max(1, min(int(steps), size))
    basis = start.new_zeros(steps, size)
    alphas, betas = start.new_zeros(steps), start.new_zeros(steps)
    vector = start / torch.linalg.vector_norm(start)
    taken = steps
    for step in range(steps):
        basis[step] = vector
        product = matvec(vector)
        alphas[step] = torch.dot(vector, product)
        for _ in range(2):
            product = product - basis[:step + 1].T @ (basis[:step + 1] @ product)
        betas[step] = torch.linalg.vector_norm(product)
        # an exact breakdown (the Krylov space is invariant) leaves zero rows: they are cut off below
        vector = product / betas[step].clamp_min(torch.finfo(product.dtype).tiny)
        if tolerance > 0 and step + 1 < steps:
            alphas_host, betas_host = torch.stack([alphas[:step + 1], betas[:step + 1]]).double().cpu()
            top, coefficients = _top_ritz_pair(alphas_host, betas_host)
            if not math.isfinite(top) or abs(betas_host[-1] * coefficients[-1]) <= tolerance * abs(top):
                taken = step + 1
                break

    host = torch.stack([alphas[:taken], betas[:taken], torch.linalg.vector_norm(basis[:taken], dim=1)]).double().cpu()
    alphas_host, betas_host, row_norms = host
    used = int((row_norms > 0.5).sum())  # the basis rows before any breakdown
    top, coefficients = _top_ritz_pair(alphas_host[:used], betas_host[:used])
    if not math.isfinite(top):
        return math.nan, start, taken
    ritz_vector = coefficients.to(basis.device, basis.dtype) @ basis[:used]
    return top, ritz_vector / torch.linalg.vector_norm(ritz_vector), taken


def _top_ritz_pair(alphas: Tensor, betas: Tensor) -> tuple[float, Tensor]:
    """The largest eigenvalue of the Lanczos tridiagonal matrix (diagonal `alphas`, off-diagonal `betas[:-1]`) and
    its eigenvector; NaN when an entry is not finite."""
    if not (torch.isfinite(alphas).all() and torch.isfinite(betas).all()):
        return math.nan, alphas
    off_diagonal = betas[:-1]
    tridiagonal = torch.diag(alphas) + torch.diag(off_diagonal, 1) + torch.diag(off_diagonal, -1)
    eigenvalues, eigenvectors = torch.linalg.eigh(tridiagonal)
    return float(eigenvalues[-1]), eigenvectors[:, -1]


class SharpnessProbe:
    """Measures the sharpness every `every` steps, at the parameters the step's gradient was taken at (the
    StabilityProbe calls it between backward and the optimiser step); keeps the top eigenvector for the next start.

    `measure()` gives `sharpness/top_eig`, `sharpness/threshold` (SGD only: `stability_threshold` at the lr of
    this step), `sharpness/residual` (relative), `sharpness/lanczos_steps` (products taken, residual excluded) and
    `sharpness/batch_loss` (the measurement batch's loss)."""

    def __init__(self, model: nn.Module, loss_of_forward: LossOfForward, optimizer: torch.optim.Optimizer | None,
                 every: int, lanczos_steps: int, tolerance: float = 0.0, seed: int = 0):
        self.model = unwrap_model(model)
        self.loss_of_forward, self.optimizer = loss_of_forward, optimizer
        self.every, self.lanczos_steps, self.tolerance = int(every), int(lanczos_steps), float(tolerance)
        self.seed = seed
        self.vector: Tensor | None = None  # the last top eigenvector, flat, on the parameters' device

    @classmethod
    def from_config(cls, model: nn.Module, optimizer: torch.optim.Optimizer, instrument_cfg: Any, train_split,
                    seed: int, default_batch_size: int,
                    batch_loss: Callable[[Tensor, Tensor], LossOfForward]) -> "SharpnessProbe | None":
        """The run's probe, or None when `instrument.sharpness_every` is 0. The measurement batch is
        `instrument.sharpness_batch_size` images (null: the training batch size, so norm statistics pool as many
        images as in a step) of the training split, drawn with the run's seed; `batch_loss(images, labels)` gives
        its loss as a function of the forward."""
        def setting(key: str) -> Any:
            return instrument_setting(instrument_cfg, key)

        every = int(setting("sharpness_every"))
        if every <= 0:
            return None
        batch = train_split.subset(int(setting("sharpness_batch_size") or default_batch_size), seed)
        return cls(model, batch_loss(batch.images, batch.labels), optimizer, every,
                   int(setting("sharpness_lanczos_steps")), float(setting("sharpness_tolerance")), seed)

    def is_measure_step(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def measure(self) -> dict[str, Tensor]:
        """This step's values as 0-d tensors on the parameters' device (empty for a model without parameters)."""
        hessian = HessianOperator(self.model, self.loss_of_forward)
        if hessian.size == 0:
            return {}
        device, dtype = hessian.params[0].device, hessian.params[0].dtype
        if self.vector is None or self.vector.numel() != hessian.size:
            generator = torch.Generator().manual_seed(self.seed)  # the run's random state is left alone
            self.vector = torch.randn(hessian.size, generator=generator, dtype=dtype).to(device)
        top, self.vector, steps_taken = lanczos_top_eigenpair(hessian.matvec, self.vector, self.lanczos_steps,
                                                              self.tolerance)
        # the true residual of the returned pair, one more product: Lanczos' own estimate ignores rounding
        residual = torch.linalg.vector_norm(hessian.matvec(self.vector) - top * self.vector) / max(abs(top), 1e-30)
        values = {"sharpness/top_eig": torch.tensor(top, dtype=dtype, device=device), "sharpness/residual": residual,
                  "sharpness/batch_loss": hessian.loss,
                  "sharpness/lanczos_steps": torch.tensor(steps_taken, dtype=dtype, device=device)}
        threshold = stability_threshold(self.optimizer)
        if threshold is not None:
            values["sharpness/threshold"] = torch.tensor(threshold, dtype=dtype, device=device)
        return values
