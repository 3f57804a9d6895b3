"""The one place where every training setting, its default and its check live.

The notebooks build a `Settings(...)`, the command line builds the same object from
its flags (cli.py turns each field below into a `--flag`), so both share these defaults.
"""

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import DreamlabError

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"  # shipped with the course: tokenizer, sample photos
# Where lessons and runs write (class images, fine-tuned models); DREAMLAB_OUTPUT moves it.
OUTPUT = Path(os.environ.get("DREAMLAB_OUTPUT", ROOT / "output"))
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class Settings:
    # What to learn
    instance_dir: str = str(DATA / "instance" / "dog")  # 3 to 10 photos of the subject
    instance_prompt: str = "a photo of sks dog"  # "sks" is a rare token the subject gets bound to
    class_prompt: str = "a photo of a dog"  # what the subject is an instance of
    class_dir: str = str(OUTPUT / "class-images")  # class images, generated if missing
    prior_preservation: bool = True  # also train on class images so "a dog" stays any dog
    prior_loss_weight: float = 1.0
    num_class_images: int = 100

    # The model and where results go
    model: str = SD15  # a hub id or a local folder in diffusers layout
    revision: str | None = None
    output_dir: str = str(OUTPUT / "dreambooth")
    device: str | None = None  # None: the GPU when there is one; "cpu" forces the CPU

    # The optimisation
    resolution: int = 512
    center_crop: bool = False  # False: random crops, a cheap augmentation
    train_batch_size: int = 1
    max_train_steps: int = 400
    learning_rate: float = 5e-6
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # "fp16" on a T4, "bf16" on newer GPUs
    train_text_encoder: bool = False
    seed: int = 0

    # Generation (class images and samples)
    sample_batch_size: int = 4
    num_inference_steps: int = 25
    guidance_scale: float = 7.5

    def validate(self) -> "Settings":
        """Raise a DreamlabError naming the first bad value; return self when all is well."""
        def bad(name, why):
            raise DreamlabError(f"setting {name}={getattr(self, name)!r}: {why}")

        for name in ("resolution", "train_batch_size", "max_train_steps",
                     "gradient_accumulation_steps", "sample_batch_size", "num_inference_steps"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        if self.resolution % 8:
            bad("resolution", "must be a multiple of 8 (the VAE shrinks images 8 times)")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be above 0 (5e-6 is usual for a full fine-tune)")
        if self.learning_rate > 1e-2:
            bad("learning_rate", "is far too high for fine-tuning; try 5e-6 to 1e-4")
        for name in ("prior_loss_weight", "max_grad_norm", "lr_warmup_steps",
                     "adam_weight_decay", "num_class_images"):
            if getattr(self, name) < 0:
                bad(name, "must not be negative")
        if self.lr_scheduler not in LR_SCHEDULERS:
            bad("lr_scheduler", f"choose one of {', '.join(LR_SCHEDULERS)}")
        if self.mixed_precision not in PRECISIONS:
            bad("mixed_precision", f"choose one of {', '.join(PRECISIONS)}")
        if not self.instance_prompt.strip():
            bad("instance_prompt", 'give a prompt with the rare token, e.g. "a photo of sks dog"')
        if self.prior_preservation:
            if not self.class_prompt.strip():
                bad("class_prompt", 'prior preservation needs one, e.g. "a photo of a dog"')
            if self.num_class_images < 1:
                bad("num_class_images", "prior preservation needs at least 1 class image")
        if not Path(self.instance_dir).is_dir():
            bad("instance_dir", "is not a folder; point it at the folder of your subject's photos")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]
