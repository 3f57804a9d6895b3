"""files.upload() as Colab's: returns {file name: bytes} and saves each file in the working directory.

The learner's "picks" are the files in the folder $COLAB_STANDIN_UPLOADS names. On Colab a large
file (a few MB) can fail to arrive whole while the upload still "succeeds": the bytes stop part
of the way and nothing says so. Here every file of 2 MB or more arrives that way, cut to its
first 64 KiB, so the code that reads the photos has to notice.
"""

import os
from pathlib import Path

TOO_BIG = 2 * 1024 * 1024  # from this size on, an upload arrives cut short
ARRIVES = 64 * 1024  # how much of such a file arrives


def _picked_files() -> list[Path]:
    folder = os.environ.get("COLAB_STANDIN_UPLOADS")
    if not folder:
        raise RuntimeError("the Colab stand-in has no files to upload: set COLAB_STANDIN_UPLOADS")
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


def _unique_name(name: str) -> str:
    """Colab's rule: 'photo.jpg', then 'photo (1).jpg', 'photo (2).jpg', ..."""
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{stem} ({n}){suffix}"
    return candidate


def upload() -> dict[str, bytes]:
    """The picked files' contents by name; each is also saved in the working directory."""
    uploaded = {}
    for path in _picked_files():
        data = path.read_bytes()
        if len(data) >= TOO_BIG:  # silently incomplete, as on Colab
            data = data[:ARRIVES]
        local = _unique_name(path.name)
        print(f"Saving {path.name} to {local}")
        Path(local).write_bytes(data)
        uploaded[path.name] = data
    return uploaded
