"""Everything a run needs that can be checked in seconds, checked before anything slow: before the
model is loaded (minutes of download on Colab) and before a single class image is drawn.

    the settings   every value, and the device asked for (Settings.validate)
    the model      a folder in diffusers layout, or a name that can be a hub id
    the photos     each subject's photos and captions: what is used, what is skipped and why
    the folders    the output, checkpoint, sample and class-image folders can be written, and their
                   disks have room for what the run will write there

train() calls check() first; so does `dreamlab train`, which prints the photos it found.
"""

import shutil
from pathlib import Path

from .errors import DreamlabError
from .models import check_model_name
from .photos import is_image_file, scan
from .settings import Settings

CLASS_IMAGE_BYTES_PER_PIXEL = 1.4  # a class image's PNG: 0.36 MB at 512 px (benchmarks/colab_budget.py)


def check(s: Settings, tokenizer=None) -> list:
    """Validate `s`, read every subject's photos (raising a DreamlabError when one has none that
    can be used), check the folders; return the photo reports. `tokenizer` (SD v1's when None)
    finds the captions too long for SD to read."""
    s.validate()
    check_model_name(s.model)
    if tokenizer is None:
        from transformers import CLIPTokenizer

        from .offline import TOKENIZER
        tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)  # SD 1.x and 2.x read prompts with CLIP's BPE
    reports = [scan(subject.instance_dir, s.resolution, tokenizer=tokenizer).check()
               for subject in s.subjects()]
    check_folders(s)
    return reports


def folders_written(s: Settings) -> dict[Path, int]:
    """The folders a run writes to, and (roughly) how many bytes it adds to each at its peak."""
    from .runs import checkpoint_dir, samples_dir

    weights, trained = parameters(s)
    if s.lora:
        trained = 0.002 * weights  # the adapters: about a thousandth of the weights at rank 4 to 8
    model = (2 if s.save_precision == "fp16" else 4) * (trained if s.lora else weights)
    checkpoint = (2 if s.compact_checkpoints else 12) * trained  # fp16 weights, or fp32 + Adam's two moments
    written = {Path(s.output_dir): int(model)}
    if s.checkpointing_steps:  # while a new one is written, the last one is still there
        count = s.max_train_steps // s.checkpointing_steps - (1 if s.compact_checkpoints else 0)
        kept = min(max(count, 0), s.checkpoints_total_limit + 1)  # compact: none at the last step
        written[checkpoint_dir(s)] = int(checkpoint * kept)
    if s.validation_steps:
        written[samples_dir(s)] = 0
    if s.prior_preservation:
        for subject in s.subjects():
            folder = Path(subject.class_dir)
            have = [p for p in folder.iterdir() if is_image_file(p)] if folder.is_dir() else []
            missing = s.num_class_images - len(have)
            if missing > 0:  # a full folder is only read: it may be shared read-only (a workshop's)
                written[folder] = int(missing * CLASS_IMAGE_BYTES_PER_PIXEL * s.resolution ** 2)
    return written


def parameters(s: Settings) -> tuple[int, int]:
    """The model's parameter count (UNet, text encoder, VAE) and the trained part's, from its
    configs; (0, 0) when the model cannot be known without downloading it (a hub id other than SD 1.5)."""
    from . import memory

    try:
        sd = memory.meta_model(s.model)
    except DreamlabError:
        return 0, 0
    count = {part: sum(p.numel() for p in getattr(sd, part).parameters())
             for part in ("unet", "text_encoder", "vae")}
    trained = count["unet"] + (count["text_encoder"] if s.text_encoder_trains else 0)
    return sum(count.values()), trained


def check_folders(s: Settings) -> None:
    """Each folder can be made and written to, and each disk has room for what goes on it."""
    need_on_disk: dict[int, tuple[int, Path]] = {}
    for folder, nbytes in folders_written(s).items():
        writable(folder)
        disk = existing_parent(folder)
        device = disk.stat().st_dev
        total, _ = need_on_disk.get(device, (0, disk))
        need_on_disk[device] = (total + nbytes, disk)
    for need, disk in need_on_disk.values():
        free = shutil.disk_usage(disk).free
        if need > free:
            raise DreamlabError(f"the disk of {disk} has {free / 1e9:.1f} GB free, and this run writes about "
                                f"{need / 1e9:.1f} GB there (model, checkpoints, class images): free some "
                                "space, or choose another output_dir / class_dir")


def existing_parent(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return folder


def writable(folder: Path) -> None:
    """Whether files can be written in `folder` (or, while it does not exist yet, in the folder it
    will be made in): a DreamlabError saying why not, in one line. Nothing is left behind."""
    folder = Path(folder).absolute()
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DreamlabError(f"cannot write to {folder}: {blocker} is a file, not a folder. Choose another "
                            "folder, or move that file away")
    probe = existing_parent(folder) / ".dreamlab-write-test"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise DreamlabError(f"cannot write to {folder} ({e.strerror or e}): choose a folder you can write "
                            "to (output_dir, class_dir)") from None
