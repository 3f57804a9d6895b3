"""The one place where every training setting, its default and its check live.

The notebooks build a `Settings(...)`, the command line builds the same object from
its flags (cli.py turns each field below into a `--flag`), so both share these defaults.
"""

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import DreamlabError
from .identifier import identifier_words

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Shipped inside the package (so a pip install has them too): tokenizer, toy model, judge, sample photos
ASSETS = Path(__file__).resolve().parent / "assets"
# Where lessons and runs write (class images, fine-tuned models): ./output under the working
# directory (on Colab /content/output), never inside the installed package; DREAMLAB_OUTPUT moves it.
OUTPUT = Path(os.environ.get("DREAMLAB_OUTPUT", "output")).absolute()
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("fp32", "fp16")
ATTENTIONS = ("sdpa", "math")


@dataclass
class Subject:
    """One thing to learn: its photos and prompt, and the class it belongs to."""

    instance_dir: str
    instance_prompt: str
    class_dir: str | None = None
    class_prompt: str | None = None


@dataclass
class Settings:
    # What to learn
    instance_dir: str = str(ASSETS / "instance" / "dog")  # 3 to 10 photos of the subject
    instance_prompt: str = "a photo of sks dog"  # "sks" is a rare token the subject gets bound to
    class_prompt: str = "a photo of a dog"  # what the subject is an instance of
    class_dir: str = str(OUTPUT / "class-images")  # class images, generated if missing
    prior_preservation: bool = True  # also train on class images so "a dog" stays any dog
    prior_loss_weight: float = 1.0
    num_class_images: int = 100
    # More subjects in the same run, each a dict (or Subject) with instance_dir, instance_prompt,
    # class_dir and class_prompt; "sks dog" and "zwx cat" then share one model.
    more_subjects: list = field(default_factory=list)

    # The model and where results go
    model: str = SD15  # a hub id or a local folder in diffusers layout
    revision: str | None = None
    output_dir: str = str(OUTPUT / "dreambooth")
    device: str | None = None  # None: the GPU when there is one; "cpu" forces the CPU

    # The optimisation
    resolution: int = 512
    center_crop: bool = False  # False: random crops (one per photo with cache_latents)
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
    text_encoder_lr: float | None = None  # None: the same as learning_rate
    text_encoder_stop_step: int | None = None  # freeze the text encoder from this step on
    # Or learn only the identifier's word ("sks"), the rest of the text encoder frozen (identifier.py)
    train_identifier: bool = False
    identifier_lr: float = 5e-3  # a word embedding needs a far higher rate than weights do
    seed: int = 0

    # LoRA: train small low-rank adapters beside the frozen weights instead of the weights
    lora: bool = False
    lora_rank: int = 4  # the adapters' width: more learns more, and costs more
    lora_alpha: float | None = None  # scales the adapters' output by alpha/rank; None: = rank

    # Memory savers (see dreamlab/memory.py for what each saves)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit: a quarter of Adam's memory (CUDA only)
    attention: str = "sdpa"  # "sdpa": PyTorch's fused attention; "math": the textbook one
    # Encode each photo once (each then keeps the crop it had), and the VAE (and a frozen text
    # encoder) leave the GPU: a faster step in less memory. False: a new random crop every pass
    cache_latents: bool = True
    step_in_backward: bool = False  # update the weights during backward, a bucket of gradients at a time

    # Loss options
    offset_noise: float = 0.0  # e.g. 0.1: lets the model learn very dark and very bright pictures
    min_snr_gamma: float = 0.0  # e.g. 5.0: Min-SNR loss weighting (Hang et al. 2023); 0: off

    # Checkpoints, to survive a disconnect: every N steps, the last K kept
    checkpointing_steps: int = 0  # 0: none
    checkpoints_total_limit: int = 2
    resume_from: str | None = None  # "latest", or a checkpoint folder
    # Half-precision weights and no optimizer state: a sixth of the size (SD 1.5's UNet: 1.7 GB, not
    # 10.3), for Google Drive; resuming is then close to, not exactly, the uninterrupted run
    compact_checkpoints: bool = False
    save_precision: str = "fp32"  # the saved model's weights: "fp16" halves its size (2.1 GB for SD 1.5)

    # Samples while training: the same prompts and seeds every N steps
    validation_prompts: list = field(default_factory=list)
    validation_steps: int = 0  # 0: none
    num_validation_images: int = 2  # per prompt (seeds 0, 1, ...)

    # Generation (class images and samples)
    sample_batch_size: int = 4
    num_inference_steps: int = 25
    guidance_scale: float = 7.5

    def validate(self) -> "Settings":
        """Raise a DreamlabError naming the first bad value; return self when all is well."""
        self.check_numbers()
        self.check_choices()
        self.check_device()
        self.check_combinations()
        self.check_subjects()
        return self

    def bad(self, name: str, why: str):
        raise DreamlabError(f"setting {name}={getattr(self, name)!r}: {why}")

    def check_numbers(self) -> None:
        bad = self.bad
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
        for name in ("lora_rank", "checkpoints_total_limit", "num_validation_images"):
            if getattr(self, name) < 1:
                bad(name, "must be at least 1")
        for name in ("offset_noise", "min_snr_gamma", "checkpointing_steps", "validation_steps"):
            if getattr(self, name) < 0:
                bad(name, "must not be negative (0 turns it off)")
        if self.text_encoder_lr is not None and not 0 < self.text_encoder_lr <= 1e-2:
            bad("text_encoder_lr", "must be above 0 and at most 1e-2 (None: the same as learning_rate)")

    def check_choices(self) -> None:
        bad = self.bad
        if self.lr_scheduler not in LR_SCHEDULERS:
            bad("lr_scheduler", f"choose one of {', '.join(LR_SCHEDULERS)}")
        if self.mixed_precision not in PRECISIONS:
            bad("mixed_precision", f"choose one of {', '.join(PRECISIONS)}")
        if self.save_precision not in SAVE_PRECISIONS:
            bad("save_precision", f"choose one of {', '.join(SAVE_PRECISIONS)}")
        if self.attention not in ATTENTIONS:
            bad("attention", f"choose one of {', '.join(ATTENTIONS)}")

    def check_combinations(self) -> None:
        """Settings that each make sense alone, but not together."""
        bad = self.bad
        if self.compact_checkpoints and self.lora:
            bad("compact_checkpoints", "is for full fine-tunes: LoRA's checkpoints are small already")
        if self.text_encoder_stop_step is not None and not self.text_encoder_trains:
            bad("text_encoder_stop_step", "needs train_text_encoder=True or train_identifier=True")
        if self.train_identifier:
            if self.train_text_encoder:
                bad("train_identifier", "choose one: train_text_encoder=True already trains every word, "
                    "the identifier's included")
            if not 0 < self.identifier_lr <= 0.1:
                bad("identifier_lr", "must be above 0 and at most 0.1 (5e-3 is usual)")
            for subject in self.subjects():  # a clear message now if a prompt has no identifier
                identifier_words(subject.instance_prompt, subject.class_prompt)
        if self.step_in_backward and self.gradient_accumulation_steps > 1:
            bad("step_in_backward", "cannot accumulate gradients (it frees them as it goes): "
                "set gradient_accumulation_steps=1 or step_in_backward=False")
        if self.validation_steps and not self.validation_prompts:
            bad("validation_steps", 'give validation_prompts too, e.g. ["a photo of sks dog on the beach"]')

    def check_subjects(self) -> None:
        """Each subject's prompts and folders."""
        bad = self.bad
        if not self.instance_prompt.strip():
            bad("instance_prompt", 'give a prompt with the rare token, e.g. "a photo of sks dog"')
        if self.prior_preservation:
            if not self.class_prompt.strip():
                bad("class_prompt", 'prior preservation needs one, e.g. "a photo of a dog"')
            if self.num_class_images < 1:
                bad("num_class_images", "prior preservation needs at least 1 class image")
        if not Path(self.instance_dir).is_dir():
            bad("instance_dir", "is not a folder; point it at the folder of your subject's photos")
        for i, subject in enumerate(self.subjects()[1:]):
            if not Path(subject.instance_dir).is_dir():
                raise DreamlabError(f"more_subjects[{i}]: instance_dir {subject.instance_dir!r} "
                                    "is not a folder")
            if self.prior_preservation and not (subject.class_dir and subject.class_prompt):
                raise DreamlabError(f"more_subjects[{i}]: prior preservation needs its class_dir "
                                    "and class_prompt")

    def check_device(self) -> None:
        """The device asked for exists, and can run the mixed precision asked for."""
        import torch

        cuda = torch.cuda.is_available()
        if self.device not in (None, "cpu") and not self.device.startswith("cuda"):
            raise DreamlabError(f"setting device={self.device!r}: give None (the GPU when there is one), "
                                "'cuda' or 'cpu'")
        if self.device and self.device.startswith("cuda") and not cuda:
            raise DreamlabError(f"setting device={self.device!r}: this machine has no CUDA GPU (on Colab: "
                                "Runtime > Change runtime type > T4 GPU). Or set device='cpu'.")
        on_cpu = self.device == "cpu" or not cuda
        if self.mixed_precision == "fp16" and on_cpu:
            raise DreamlabError("setting mixed_precision='fp16' needs a GPU (accelerate has no fp16 "
                                "on the CPU): use 'bf16' or 'no' on the CPU")

    @property
    def text_encoder_trains(self) -> bool:
        """Whether any of the text encoder changes (all of it, or the identifier's word)."""
        return self.train_text_encoder or self.train_identifier

    def subjects(self) -> list[Subject]:
        """The main subject (instance_dir, instance_prompt, ...) then more_subjects."""
        main = Subject(self.instance_dir, self.instance_prompt, self.class_dir, self.class_prompt)
        more = []
        for i, s in enumerate(self.more_subjects):
            try:
                more.append(s if isinstance(s, Subject) else Subject(**s))
            except TypeError as e:
                raise DreamlabError(f"more_subjects[{i}] = {s!r}: {e}; give instance_dir, "
                                    "instance_prompt, class_dir and class_prompt") from None
        return [main] + more

    def to_dict(self) -> dict:
        return asdict(self)


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings)]
