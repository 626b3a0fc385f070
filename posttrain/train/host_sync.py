"""What an optimizer step reads back from the device, and when.

On a GPU the host queues kernels ahead of the device; every read of a device value
(``.item()``, ``float(t)``, ``if tensor:``, and also a plain ``torch.tensor(x).to("cuda")``, which
PyTorch follows with a stream synchronisation) makes the host wait until the device has drained
its queue, and the device then idles while the host queues the next kernels. The step therefore:

- counts loss units and tokens on the host where the batch says them (the collators count while
  the batch is still on the host) and, when a count lives on the device or several processes
  must be summed, scales the loss by a device tensor instead of reading the count back;
- reads the device once per step, after the backward pass and clipping, to check the loss and
  the gradient norm together: :class:`~posttrain.train.loop.NonFiniteLossError` promises that a
  non-finite step never reaches the weights, so that read must come before ``optimizer.step()``.
"""

from __future__ import annotations

import math

import torch


class DeferredValue:
    """A device scalar copied to the host without waiting; :meth:`get` waits only for the copy
    (an event recorded right after it), not for work queued later."""

    def __init__(self, value: torch.Tensor):
        self._event = None
        if value.device.type == "cuda":
            self._host = torch.empty((), dtype=value.dtype, pin_memory=True)
            self._host.copy_(value, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = value.detach()

    def get(self) -> float:
        if self._event is not None:
            self._event.synchronize()
        return float(self._host)


def device_scalar(value, device) -> torch.Tensor:
    """``value`` (number, or 0-dim tensor anywhere) as a float32 0-dim tensor on ``device``. A
    host value is written by a fill kernel (a kernel argument), never by a blocking copy."""
    if isinstance(value, torch.Tensor) and value.device.type != "cpu":
        return value.to(device=device, dtype=torch.float32)
    return torch.full((), float(value), dtype=torch.float32, device=device)


def count_window(accelerator, units: list, tokens: list[int]) -> tuple[float | torch.Tensor, int | DeferredValue]:
    """Loss units and real tokens of one accumulated batch, summed over micro-batches and
    processes.

    ``units``: what ``count_units`` returned per micro-batch (numbers, host or device tensors),
    summed in float32 in micro-batch order as the loss normaliser always was. ``tokens``: host
    ints. On one process with host counts the units come back as a float and the tokens as an
    int, with no device access. Otherwise the units are a float32 0-dim device tensor (never
    read back) and the tokens a :class:`DeferredValue` to read at the end of the step.
    """
    total = sum(torch.as_tensor(u, dtype=torch.float32) if not isinstance(u, torch.Tensor) else u.float() for u in units)
    if not isinstance(total, torch.Tensor):
        total = torch.zeros((), dtype=torch.float32)
    if accelerator.num_processes == 1:
        return (float(total) if total.device.type == "cpu" else total), sum(tokens)
    local = torch.stack([device_scalar(total, accelerator.device), device_scalar(sum(tokens), accelerator.device)])
    reduced = accelerator.reduce(local, reduction="sum")
    return reduced[0], DeferredValue(reduced[1])


def loss_scale(units: float | torch.Tensor, num_processes: int) -> float | torch.Tensor:
    """``num_processes / max(units, 1)``: the factor that turns a micro-batch's summed loss into
    its share of the accumulated batch's mean (DDP averages gradients over processes, so the
    process count multiplies back). A device ``units`` gives a device factor, divided in
    float32 -- correctly rounded, so equal to the float64 quotient rounded to float32."""
    if isinstance(units, torch.Tensor):
        return torch.full_like(units, float(num_processes)).div_(units.clamp(min=1.0))
    return num_processes / max(units, 1.0)


def first_non_finite(loss: torch.Tensor, grad_norm, check_grad_norm: bool) -> tuple[str, float] | None:
    """``("loss" | "gradient norm", value)`` for the first of them that is NaN/Inf, else None;
    one read of the device for both. ``grad_norm`` may be None (nothing clipped), a number or a
    tensor; it is skipped when ``check_grad_norm`` is False (fp16 loss scaling skips such steps
    itself)."""
    names, values = ["loss"], [loss.detach().float().reshape(())]
    if grad_norm is not None and check_grad_norm:
        names.append("gradient norm")
        values.append(torch.as_tensor(grad_norm).detach().float().reshape(()).to(values[0].device))
    host = torch.stack(values).tolist()
    for name, value in zip(names, host):
        if not math.isfinite(value):
            return name, value
    return None
