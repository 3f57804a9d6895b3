"""dreamlab: DreamBooth for Stable Diffusion, the code behind the course's notebooks."""

from . import (  # noqa: F401
    errors,
    exercises,  # the lessons' self-checking exercises (it loads no library)
    quiet,  # before any library: it quiets a library note
)
from .class_images import generate_class_images
from .data import DreamBoothDataset, collate, list_images
from .errors import DreamlabError
from .export import (
    push_to_hub,
    save_diffusers,
    save_kohya_lora,
    save_lora,
    save_single_file,
    write_model_card,
)
from .language import set_language
from .models import StableDiffusion, load_model
from .offline import offline_model, random_model
from .runs import model_status
from .sample import generate, image_grid
from .settings import ASSETS, OUTPUT, SD15, Settings
from .train import TrainResult, train, training_step

__all__ = ["ASSETS", "OUTPUT", "DreamBoothDataset", "DreamlabError", "SD15", "Settings", "StableDiffusion",
           "TrainResult", "collate", "generate", "generate_class_images", "image_grid", "list_images",
           "load_model", "model_status", "offline_model", "push_to_hub", "random_model", "save_diffusers",
           "save_kohya_lora", "save_lora", "save_single_file", "set_language", "train", "training_step",
           "write_model_card"]
__version__ = "0.1.0"

errors.in_notebooks_say_only_the_message()
