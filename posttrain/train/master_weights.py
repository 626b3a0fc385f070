"""AdamW that keeps float32 master copies of 16-bit weights.

A model held in bfloat16 runs its matmuls without a cast per matmul and keeps half-size
activations, but AdamW applied to bf16 weights loses every update smaller than half a bf16 step
(``2**-8`` relative): with a learning rate of 1e-5 most updates vanish. This optimizer updates a
float32 copy of each 16-bit trainable weight (the master) and writes the rounded result back to
the model, so small updates accumulate in the master until they move the 16-bit weight.

Memory per 16-bit trainable parameter: 2 bytes weight + 2 gradient + 4 master + 8 AdamW state
(+4 for the float32 gradient during the step), against 4 + 4 + 8 (+2 for autocast's bf16 copy)
for a float32 model under bf16 autocast.

Gradients are produced and, under gradient accumulation, summed in the model's 16-bit dtype (a
float32 model under autocast gets bf16-computed gradients too, but sums them in float32); they
are converted to float32 at the step. Clipping happens before, on the 16-bit gradients.
"""

from __future__ import annotations

import torch

HALF = (torch.bfloat16, torch.float16)


class MasterWeightAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` over float32 masters of the 16-bit parameters in ``params``;
    float32 parameters are optimised directly. Takes AdamW's arguments (``fused``/``foreach``
    included). ``state_dict()`` carries the masters, so a resumed run continues from the exact
    float32 values rather than from the rounded weights.
    """

    def __init__(self, params, **kwargs):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self._pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        master_groups = []
        for group in groups:
            masters = []
            for parameter in group["params"]:
                if parameter.dtype in HALF:
                    master = parameter.detach().float()
                    self._pairs.append((parameter, master))
                    masters.append(master)
                else:
                    masters.append(parameter)
            master_groups.append({**group, "params": masters})
        super().__init__(master_groups, **kwargs)

    @property
    def has_masters(self) -> bool:
        return bool(self._pairs)

    def _place_masters(self) -> None:
        """Keep each master on its parameter's device: the optimizer is made before accelerate
        moves the model (moving a Parameter keeps its identity, so AdamW over the parameters
        follows it; the masters are separate tensors and must follow by hand)."""
        for parameter, master in self._pairs:
            if master.device != parameter.device:
                master.data = master.data.to(parameter.device)
                state = self.state.get(master, {})
                for key, value in state.items():
                    # AdamW keeps "step" on the host unless fused/capturable put it on the device
                    if isinstance(value, torch.Tensor) and (key != "step" or value.device.type != "cpu"):
                        state[key] = value.to(parameter.device)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterWeightAdamW does not take a closure")
        self._place_masters()
        for parameter, master in self._pairs:
            master.grad = None if parameter.grad is None else parameter.grad.float()
            parameter.grad = None  # the float32 copy replaces it: peak memory +2 bytes, not +4
        super().step()
        if self._pairs:
            models, masters = zip(*self._pairs)
            torch._foreach_copy_(list(models), list(masters))
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for parameter, master in self._pairs:
            master.grad = None
            if parameter.grad is not None:
                if set_to_none:
                    parameter.grad = None
                else:
                    parameter.grad.zero_()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["master_weights"] = [master.detach() for _, master in self._pairs]  # torch.save copies
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        masters = state_dict.pop("master_weights", None)
        self._place_masters()  # AdamW puts the loaded state on each master's device
        super().load_state_dict(state_dict)
        if masters is None:  # a checkpoint of a run without masters: start from the weights
            masters = [parameter.detach() for parameter, _ in self._pairs]
        if len(masters) != len(self._pairs):
            raise ValueError(f"optimizer checkpoint holds {len(masters)} master weights, this model has {len(self._pairs)} 16-bit trainable tensors")
        with torch.no_grad():
            for (parameter, master), saved in zip(self._pairs, masters):
                master.data = saved.to(device=parameter.device, dtype=torch.float32).clone()
                parameter.copy_(master)
