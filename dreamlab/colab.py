"""The lessons' settings on a GPU (Colab): SD 1.5, the memory savers that fit, work kept on Drive."""

import sys

from .settings import OUTPUT, Settings

DRIVE_FOLDER = "/content/drive/MyDrive/dreamlab"


def output_folder(save_to_drive: bool = True) -> str:
    """Where runs write: on Colab with `save_to_drive`, your Google Drive (mounted here), so that
    a disconnect, which wipes the session's disk, loses nothing; elsewhere dreamlab.OUTPUT."""
    if save_to_drive and "google.colab" in sys.modules:
        from google.colab import drive

        drive.mount("/content/drive")
        return DRIVE_FOLDER
    return str(OUTPUT)


def gpu_settings(save_to_drive: bool = True, **overrides) -> Settings:
    """Settings() (SD 1.5, the dog, 512 px) plus the memory savers that fit this GPU (on a T4:
    fp16, gradient checkpointing, the fused optimizer step), a checkpoint every 100 steps and
    resume_from="latest", with every folder under output_folder(save_to_drive)."""
    from . import memory

    text_encoder = {name: overrides.get(name, getattr(Settings, name))  # what it trains changes the fit
                    for name in ("train_text_encoder", "train_identifier")}
    savers, _ = memory.plan(memory.gpu_memory_gib(), **text_encoder)
    out = output_folder(save_to_drive)
    values = dict(savers, output_dir=f"{out}/dreambooth", class_dir=f"{out}/class-images",
                  checkpointing_steps=100, resume_from="latest")
    values = {k: v for k, v in values.items() if k in Settings.__dataclass_fields__}
    return Settings(**{**values, **overrides})
