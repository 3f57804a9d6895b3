"""The optimizer: AdamW or 8-bit AdamW, and optionally its step fused into the backward pass."""

import torch

from .errors import DreamlabError


def make_optimizer(groups: list[dict], lr: float, weight_decay: float, use_8bit_adam: bool,
                   device) -> torch.optim.Optimizer:
    """AdamW over parameter groups (each may carry its own "lr").

    8-bit AdamW (bitsandbytes) keeps Adam's two running averages in 8 bits instead of 32: 6 bytes
    less per trained weight, 5 GB less for SD's UNet. It runs on CUDA GPUs only."""
    if not use_8bit_adam:  # fused: one kernel for all weights, 3-4 times faster than the default
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay,
                                 fused=torch.device(device).type in ("cpu", "cuda"))
    if torch.device(device).type != "cuda":
        raise DreamlabError(f"use_8bit_adam=True: bitsandbytes' 8-bit AdamW runs on CUDA GPUs only, "
                            f"and this run is on {device}. Set use_8bit_adam=False.")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise DreamlabError("use_8bit_adam=True needs bitsandbytes: pip install bitsandbytes "
                            "(or set use_8bit_adam=False)") from None
    return bnb.optim.AdamW8bit(groups, lr=lr, weight_decay=weight_decay)


class FusedStep:
    """Update each weight the moment the backward pass has its gradient, then free the gradient.

    Normally every gradient is kept until optimizer.step(): for a full fine-tune of SD's UNet
    that is 3.4 GB held at the peak. Here PyTorch calls `update` as each gradient is ready
    (register_post_accumulate_grad_hook), so only a few gradients exist at any time. The
    optimizer must have one parameter group per parameter, so that one group can be stepped alone.
    Costs: no gradient accumulation, and clipping is per weight tensor, not over all gradients.
    With fp16, gradients are unscaled here; a tensor whose gradient overflowed skips this step
    and the loss scale is halved.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_grad_norm: float = 0.0, scaler=None):
        self.optimizer, self.max_grad_norm, self.scaler = optimizer, max_grad_norm, scaler
        self.group_of = {}
        for group in optimizer.param_groups:
            if len(group["params"]) != 1:
                raise ValueError("FusedStep needs one parameter group per parameter")
            self.group_of[group["params"][0]] = group
        self.overflow, self.scale = False, None
        self.hooks = [p.register_post_accumulate_grad_hook(self.update) for p in self.group_of]

    def update(self, param: torch.Tensor) -> None:
        if self.scaler is not None:
            if self.scale is None:  # read once a step: get_scale() waits for the GPU
                self.scale = self.scaler.get_scale()
            param.grad.div_(self.scale)
        if not torch.isfinite(param.grad).all():
            self.overflow, param.grad = True, None  # this tensor skips the step
            return
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([param], self.max_grad_norm)
        groups = self.optimizer.param_groups
        self.optimizer.param_groups = [self.group_of[param]]  # step this one tensor only
        try:
            self.optimizer.step()
        finally:
            self.optimizer.param_groups = groups
        param.grad = None  # its memory is free for the next gradients

    def end_step(self) -> bool:
        """After backward: True when some gradient overflowed. Under fp16 the loss scale then follows
        GradScaler's own rule (it cannot see the gradients, which are gone): an overflow multiplies
        it by backoff_factor (0.5), growth_interval steps without one by growth_factor (2). The count
        lives in the scaler's own state, so that a checkpoint of the scaler holds it."""
        overflow, self.overflow, scale, self.scale = self.overflow, False, self.scale, None
        if self.scaler is not None and scale is not None:
            state = self.scaler.state_dict()
            if overflow:
                state.update(scale=scale * state["backoff_factor"], _growth_tracker=0)
            elif state["_growth_tracker"] + 1 >= state["growth_interval"]:
                state.update(scale=scale * state["growth_factor"], _growth_tracker=0)
            else:
                state["_growth_tracker"] += 1
            self.scaler.load_state_dict(state)
        return overflow

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
