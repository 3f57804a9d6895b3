"""Get the five parts ready to train: what is frozen, what learns, in which precision.

train() calls make_trainable() on the loaded model; the memory planner (memory.py) calls it on the
same architecture built on PyTorch's `meta` device, so that it estimates the training that runs.
"""

import functools

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch.utils.checkpoint import checkpoint

from .identifier import identifier_token_ids, train_identifier_embedding
from .lora import add_lora


def frozen_dtype(mixed_precision: str) -> torch.dtype:
    """The frozen parts' precision: half under fp16/bf16 mixed precision (the trained weights
    stay float32 whatever it is: the optimizer cannot update float16 weights exactly)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def place(module: torch.nn.Module, device, dtype: torch.dtype) -> None:
    module.to(device)
    if module.dtype != dtype:  # (nn.Module's own .to: diffusers' warns on every cast of a loaded model)
        torch.nn.Module.to(module, dtype=dtype)


def make_trainable(s, sd, device, checkpoint_options: dict | None = None) -> dict:
    """Freeze what is not trained, add LoRA adapters, switch the memory savers on, following the
    settings `s`. Returns the trained weights by name ("unet.<name>", "text_encoder.<name>").
    `checkpoint_options` go to torch's checkpoint() under gradient checkpointing (the planner
    passes its own, to recompute as a GPU would)."""
    half = frozen_dtype(s.mixed_precision)
    place(sd.vae.requires_grad_(False), device, half)
    if s.lora:  # frozen model in half precision, float32 adapters
        place(sd.unet, device, half)
        add_lora(sd.unet, "unet", s.lora_rank, s.lora_alpha)
    else:  # the whole UNet learns, in float32 ("Attempting to unscale FP16 gradients" otherwise)
        place(sd.unet.requires_grad_(True), device, torch.float32)
    sd.text_encoder.requires_grad_(False)
    # float32 where weights of its own are trained: all of them, or the word table
    trains_own = s.train_identifier or (s.train_text_encoder and not s.lora)
    place(sd.text_encoder, device, torch.float32 if trains_own else half)
    if s.train_text_encoder:
        if s.lora:
            add_lora(sd.text_encoder, "text_encoder", s.lora_rank, s.lora_alpha)
        else:
            sd.text_encoder.requires_grad_(True)
    if s.train_identifier:  # only the identifier's row of the word table learns
        train_identifier_embedding(sd.text_encoder, identifier_token_ids(sd.tokenizer, s.subjects()))
    sd.unet.train(), sd.text_encoder.train(s.text_encoder_trains)
    if s.gradient_checkpointing:  # keep fewer activations; recompute them in the backward pass
        options = checkpoint_options or {"use_reentrant": False}
        sd.unet.enable_gradient_checkpointing(functools.partial(checkpoint, **options))
        if s.text_encoder_trains:  # (transformers 5 renamed the method)
            enable = getattr(sd.text_encoder, "activation_checkpointing_enable", None)
            (enable or sd.text_encoder.gradient_checkpointing_enable)(options)
    sd.unet.set_attn_processor(AttnProcessor2_0() if s.attention == "sdpa" else AttnProcessor())
    return {f"{part}.{name}": p for part in ("unet", "text_encoder")
            for name, p in getattr(sd, part).named_parameters() if p.requires_grad}
