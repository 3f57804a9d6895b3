"""dreamlab: DreamBooth for Stable Diffusion, the code behind the course's notebooks."""

from .data import DreamBoothDataset, collate, generate_class_images, list_images
from .errors import DreamlabError
from .export import (
    push_to_hub,
    save_diffusers,
    save_kohya_lora,
    save_lora,
    save_single_file,
    write_model_card,
)
from .models import StableDiffusion, load_model
from .offline import offline_model, random_model
from .sample import generate, image_grid
from .settings import DATA, OUTPUT, SD15, Settings
from .train import TrainResult, train, training_step

__all__ = ["DATA", "OUTPUT", "DreamBoothDataset", "DreamlabError", "SD15", "Settings", "StableDiffusion",
           "TrainResult", "collate", "generate", "generate_class_images", "image_grid",
           "list_images", "load_model", "offline_model", "push_to_hub", "random_model", "save_diffusers",
           "save_kohya_lora", "save_lora", "save_single_file", "train", "training_step", "write_model_card"]
__version__ = "0.1.0"
