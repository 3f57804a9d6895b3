"""The course on Colab (or any GPU): which world a lesson runs in, the settings that fit, and the
learner's work kept on Google Drive.

Every lesson's parameter cell asks `offline()`: without a GPU the lesson runs the toy model on the
CPU; with one, SD 1.5 with `gpu_settings()`. Two environment variables exist for the tests and
need never be set by a learner: DREAMLAB_OFFLINE=1 forces the toy world, DREAMLAB_OFFLINE=0 the
SD 1.5 one, and DREAMLAB_DEVICE the device it runs on (the Colab rehearsal runs Colab's branch on
a CPU).

On Drive the course keeps one folder, MyDrive/dreamlab:
    my-photos/          your photos (lesson 2), and my-subject.json: their prompts
    class-images/...    the class images, made once (lesson 2) and shared by lessons 3 to 5
    dreambooth/         lesson 3's model (half precision), and its compact checkpoints beside it
    dreambooth-lora/    lesson 5's LoRA adapters
"""

import functools
import json
import os
import re
import sys
import time
from pathlib import Path

from .settings import ASSETS, OUTPUT, SD15, Settings

COURSE_GIB = 13.0  # every lesson's GPU memory stays under this, CUDA context included (a T4 has 14.75)
T4_GIB = 14.75  # what torch reports for Colab's T4: the plan when there is no GPU to ask
DRIVE_MOUNT = "drive"  # under the working directory, /content on Colab
SUBJECT_FILE = "my-subject.json"
COURSE_DOG = dict(instance_dir=str(ASSETS / "instance" / "dog"), instance_prompt="a photo of sks dog",
                  class_prompt="a photo of a dog")


def offline() -> bool:
    """True: this lesson runs the toy model on the CPU (no GPU here, or DREAMLAB_OFFLINE=1)."""
    import torch

    forced = os.environ.get("DREAMLAB_OFFLINE")
    return forced == "1" if forced in ("0", "1") else not torch.cuda.is_available()


def device() -> str:
    """The device lessons run on: "cuda", or "cpu" offline (DREAMLAB_DEVICE overrides it). On the
    CPU, torch then uses as many threads as there are cores free (cpu_threads)."""
    name = os.environ.get("DREAMLAB_DEVICE") or ("cpu" if offline() else "cuda")
    if name == "cpu":
        import torch

        torch.set_num_threads(cpu_threads())
    return name


@functools.cache
def torch_threads() -> int:
    """Torch's own choice of threads (one per core), read once, before device() changes it."""
    import torch

    return torch.get_num_threads()


def cpu_threads(cores: int | None = None, loadavg: Path = Path("/proc/loadavg")) -> int:
    """The CPU's cores (torch's choice), less those other programs keep busy right now, at least 1.
    Torch's threads wait for each other at every operation: when another program holds a core,
    two threads on two cores make a toy training step ten to thirty times slower than one thread
    does (measured on this course's 2-core machine), while on an idle machine the second thread
    makes it only about 20 % faster. "Busy" is Linux's count of runnable tasks, read a few times
    (elsewhere, every core is taken as free)."""
    cores = cores or torch_threads()
    try:
        busy = []
        for _ in range(5):  # the fewest seen: a program that runs all the time, not a blip
            running = loadavg.read_text().split()[3].split("/")[0]
            busy.append(int(running) - 1)  # (this process is one of them)
            time.sleep(0.02)
    except (OSError, IndexError, ValueError):
        return cores
    return max(1, cores - min(busy))


def in_colab() -> bool:
    return "google.colab" in sys.modules


def course_folder(save_to_drive: bool = True) -> Path:
    """Where the course keeps its work: on Colab with `save_to_drive`, MyDrive/dreamlab on your
    Google Drive (mounted here; Colab asks you to allow it once), which a disconnect does not wipe;
    elsewhere dreamlab.OUTPUT."""
    if not (save_to_drive and in_colab()):
        return OUTPUT
    from google.colab import drive

    mountpoint = Path.cwd() / DRIVE_MOUNT
    drive.mount(str(mountpoint))
    folder = mountpoint / "MyDrive" / "dreamlab"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def my_photos(course: Path) -> Path:
    """The folder for your own photos: upload them there in lesson 2, or put them there with
    Google Drive (drive.google.com, or its app on your phone: photos of any size)."""
    return Path(course) / "my-photos"


def save_subject(course: Path, instance_prompt: str, class_prompt: str) -> Path:
    """Remember the prompts for the photos in my_photos(course), for lessons 3 to 5."""
    path = Path(course) / SUBJECT_FILE
    path.write_text(json.dumps({"instance_prompt": instance_prompt, "class_prompt": class_prompt}, indent=1))
    return path


def subject(course: Path) -> dict:
    """Your photos and prompts when lesson 2 saved them (and the photos are there), else the course's
    dog: a dict of instance_dir, instance_prompt, class_prompt."""
    from .data import IMAGE_SUFFIXES

    record, photos = Path(course) / SUBJECT_FILE, my_photos(course)
    has_photos = photos.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in photos.iterdir())
    if record.exists() and has_photos:
        return {"instance_dir": str(photos), **json.loads(record.read_text())}
    return dict(COURSE_DOG)


def class_images_dir(course: Path, class_prompt: str) -> Path:
    """One folder of class images per class prompt, shared by every lesson and run that uses it."""
    return Path(course) / "class-images" / (re.sub(r"[^a-z0-9]+", "-", class_prompt.lower()).strip("-"))


def gpu_settings(save_to_drive: bool = True, **overrides) -> Settings:
    """SD 1.5 at 512 px on your photos (lesson 2) or the course's dog, with:
    - the memory savers that keep the run under COURSE_GIB on this GPU (on a T4: fp16, gradient
      checkpointing, the optimizer step in backward), the same settings on any GPU;
    - the class images of lesson 2, shared (made in fp16 with a fast sampler if missing);
    - with `save_to_drive` on Colab, everything on Drive: a compact checkpoint every 200 steps (the
      last one kept; Drive keeps what is deleted in its bin for 30 days, and counts it), resume_from=
      "latest", and the model saved in half precision (2.1 GB).
    `overrides` are Settings fields; those that change what fits (train_text_encoder, lora, ...)
    are planned with."""
    from . import memory

    course = course_folder(save_to_drive)
    on_drive = course != OUTPUT
    me = subject(course)
    fixed = {k: v for k, v in overrides.items() if k in memory.DEFAULTS}
    budget = min(memory.gpu_memory_gib() or T4_GIB, COURSE_GIB)
    savers, _ = memory.plan(budget, **fixed)
    if device() == "cpu" and savers["mixed_precision"] == "fp16":
        savers["mixed_precision"] = "bf16"  # accelerate's mixed precision on a CPU (the rehearsal)
    name = "dreambooth-lora" if savers["lora"] else "dreambooth"
    values = dict(savers, model=SD15, **me, class_dir=str(class_images_dir(course, me["class_prompt"])),
                  output_dir=str(course / name), device=device(), checkpointing_steps=200,
                  checkpoints_total_limit=1, compact_checkpoints=on_drive and not savers["lora"],
                  resume_from="latest", save_precision="fp16")
    values = {k: v for k, v in values.items() if k in Settings.__dataclass_fields__}
    return Settings(**{**values, **overrides})
