"""Files written whole: a crash, a full disk or a vanished folder leaves the old file or folder,
or nothing, never half of one, and one clear message."""

import contextlib
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import DreamlabError


@contextlib.contextmanager
def written_whole(tmp: Path, what: str):
    """Write into the folder `tmp` (made afresh); if anything fails (a full disk, a folder that
    vanished: an OSError, or safetensors' own error), remove it and raise one clear message."""
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        yield
    except (OSError, SafetensorError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DreamlabError(f"could not write {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                            "Is the disk full, or the folder gone? Nothing half-written was left.") from None


def write_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict | None = None) -> Path:
    """Write a .safetensors file through a temporary file, then rename it into place."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DreamlabError(f"{path}: give a file name ending in .safetensors "
                            "(the only weight format written here: it cannot hide code, unlike .ckpt)")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # safetensors wants plain, contiguous CPU tensors, each with its own memory
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise DreamlabError(f"could not write {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                            "Is the disk full, or the folder gone?") from None
    return path
