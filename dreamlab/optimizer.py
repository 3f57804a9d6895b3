"""The optimizer: AdamW or 8-bit AdamW, and optionally its step taken inside the backward pass."""

import torch

from .errors import DreamlabError

BUCKET_BYTES = 2**26  # StepInBackward's: 64 MiB of gradients stepped at once (SD's UNet has 3.4 GB)


def make_optimizer(groups: list[dict], lr: float, weight_decay: float, use_8bit_adam: bool,
                   device) -> torch.optim.Optimizer:
    """AdamW over parameter groups (each may carry its own "lr").

    8-bit AdamW (bitsandbytes) keeps Adam's two running averages in 8 bits instead of 32: 6 bytes
    less per trained weight, 5 GB less for SD's UNet. It runs on CUDA GPUs only."""
    if not use_8bit_adam:  # fused: one kernel over all weights, 3-4 times faster than the default
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


class StepInBackward:
    """Update the weights while the backward pass runs, and free their gradients at once.

    Normally every gradient is kept until optimizer.step(): for a full fine-tune of SD's UNet that
    is 3.4 GB held at the peak. Here PyTorch tells us as each gradient is ready
    (register_post_accumulate_grad_hook); once the ready ones add up to `bucket_bytes`, one
    optimizer.step() updates them together (AdamW skips weights that have no gradient) and their
    gradients are freed. So at most a bucket of gradients exists at any time, and the optimizer's
    fused kernel still runs over many tensors at once: stepping each of SD's 686 weight tensors on
    its own cost 5 times one step over all of them. The last bucket is stepped by end_step().
    Costs: no gradient accumulation, and clipping is per bucket, not over all gradients at once.
    With fp16, gradients are unscaled here; a bucket whose gradients overflowed skips this step
    and the loss scale is halved.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_grad_norm: float = 0.0, scaler=None,
                 bucket_bytes: int = BUCKET_BYTES):
        self.optimizer, self.max_grad_norm, self.scaler = optimizer, max_grad_norm, scaler
        self.overflow, self.scale = False, None
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.buckets = GradientBuckets(params, self.step_bucket, bucket_bytes)

    def step_bucket(self, bucket: list[torch.Tensor]) -> None:
        grads = [p.grad for p in bucket]
        if self.scaler is not None:
            if self.scale is None:  # read once a step: get_scale() waits for the GPU
                self.scale = self.scaler.get_scale()
            torch._foreach_div_(grads, self.scale)
        if not all(torch.isfinite(g).all() for g in grads):
            self.overflow = True  # this bucket skips the step
            return
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(bucket, self.max_grad_norm)
        self.optimizer.step()  # only these weights have gradients now: only they change

    def end_step(self) -> bool:
        """After backward: step the last bucket; True when some gradient overflowed. Under fp16 the
        loss scale then follows GradScaler's own rule (it cannot see the gradients, which are gone):
        an overflow multiplies it by backoff_factor (0.5), growth_interval steps without one by
        growth_factor (2). The count lives in the scaler's own state, so that a checkpoint of the
        scaler holds it."""
        self.buckets.flush()
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
        self.buckets.remove()


class GradientBuckets:
    """Gradients as the backward pass makes them, handed to `use(bucket)` once `bucket_bytes` of
    them are ready (flush() hands over the rest), then freed. StepInBackward steps the optimizer on
    each bucket; the memory planner (memory.py) counts what that frees."""

    def __init__(self, params: list[torch.Tensor], use, bucket_bytes: int = BUCKET_BYTES):
        self.use, self.bucket_bytes, self.ready, self.ready_bytes = use, bucket_bytes, [], 0
        self.hooks = [p.register_post_accumulate_grad_hook(self.gradient_ready) for p in params]

    def gradient_ready(self, param: torch.Tensor) -> None:
        self.ready.append(param)
        self.ready_bytes += param.grad.nbytes
        if self.ready_bytes >= self.bucket_bytes:
            self.flush()

    def flush(self) -> None:
        bucket, self.ready, self.ready_bytes = self.ready, [], 0
        if bucket:
            self.use(bucket)
        for p in bucket:
            p.grad = None  # their memory is free for the next gradients

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
