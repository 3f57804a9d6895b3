"""A stand-in for Colab's `google.colab`, for the Colab rehearsal (tests/colab_rehearsal.py).

Only what the course uses, behaving as Colab's does from the notebook's side:
- files.upload(): the photos in $COLAB_STANDIN_UPLOADS, as if the learner had picked them;
- drive.mount(): the learner's Drive, $COLAB_STANDIN_DRIVE, which outlives every machine.

Colab imports this package when a kernel starts, so `"google.colab" in sys.modules` is true in
every cell; the rehearsal does the same from an IPython startup file.
"""

from google.colab import drive, files

__all__ = ["drive", "files"]
