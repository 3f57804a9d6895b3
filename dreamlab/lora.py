"""LoRA: instead of changing a big weight matrix W, learn a small low-rank change B @ A beside it.

For a 320 x 320 attention projection and rank 4, A is 4 x 320 and B is 320 x 4: 2,560 numbers
trained instead of 102,400. B starts at zero, so training starts from the unchanged model; the
change is scaled by alpha / rank. peft adds the adapters; diffusers saves and loads them.
"""

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, inject_adapter_in_model

# What LoRA adapts (as diffusers' train_dreambooth_lora.py): the attention projections
LORA_TARGETS = {"unet": ["to_k", "to_q", "to_v", "to_out.0"],
                "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"]}


def add_lora(model: torch.nn.Module, part: str, rank: int, alpha: float | None = None) -> None:
    """Freeze `model` and give its attention projections trainable float32 adapters."""
    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                        target_modules=LORA_TARGETS[part])
    if part == "unet":
        model.add_adapter(config)  # diffusers' way, which its LoRA loading and saving expect
    else:  # transformers' add_adapter wants a newer peft than Colab has; peft's own call does the same
        inject_adapter_in_model(config, model)
    cast_training_params(model, torch.float32)  # the adapters train in float32, even beside fp16 weights
