"""Library notes that say nothing a learner can act on, kept out of the lessons' outputs.

Imported first by dreamlab/__init__.py, before anything imports diffusers or transformers."""

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging


def not_about_torchvision(record) -> bool:
    """transformers says, for each image processor it meets, that torchvision is missing and PIL
    does the work instead: true, and nothing to act on (torchvision is not needed here)."""
    return "requires torchvision" not in record.getMessage()


for handler in transformers_logging.get_logger("transformers").handlers:
    handler.addFilter(not_about_torchvision)


def not_about_missing_text_encoder_lora(record) -> bool:
    """diffusers warns, loading a UNet-only LoRA, that the text encoder has none: as it should."""
    return "No LoRA keys associated to CLIPTextModel" not in record.getMessage()


for handler in diffusers_logging.get_logger("diffusers").handlers:
    handler.addFilter(not_about_missing_text_encoder_lora)
