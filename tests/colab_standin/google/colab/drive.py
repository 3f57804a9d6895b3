"""drive.mount() as Colab's, from the notebook's side: `<mountpoint>/MyDrive` is the learner's Drive.

The Drive is the folder $COLAB_STANDIN_DRIVE (it holds MyDrive/), kept by the rehearsal across
machines as Google keeps it across Colab sessions; mounting links the mountpoint to it. The
checks and messages are Colab's.
"""

import os


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000,
          readonly: bool = False) -> None:
    if " " in mountpoint:
        raise ValueError("Mountpoint must not contain a space.")
    mountpoint = os.path.expanduser(mountpoint)
    if not force_remount and os.path.isdir(os.path.join(mountpoint, "MyDrive")):
        print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, "
              f'call drive.mount("{mountpoint}", force_remount=True).')
        return
    if os.path.islink(mountpoint):  # a remount: take the old link away, as Colab unmounts first
        os.unlink(mountpoint)
    if os.path.isdir(mountpoint) and os.listdir(mountpoint):
        raise ValueError("Mountpoint must not already contain files")
    if os.path.exists(mountpoint) and not os.path.isdir(mountpoint):
        raise ValueError("Mountpoint must either be a directory or not exist")
    parent = os.path.dirname(os.path.normpath(mountpoint))
    if parent and not os.path.exists(parent):
        raise ValueError("Mountpoint must be in a directory that exists")
    if os.path.isdir(mountpoint):
        os.rmdir(mountpoint)  # an empty folder: the link takes its place
    os.symlink(os.environ["COLAB_STANDIN_DRIVE"], mountpoint)
    print(f"Mounted at {mountpoint}")
