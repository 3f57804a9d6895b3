import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread each, the lessons' kernels too
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent  # the checkout

# The public DreamBooth photos live beside the checkout (../shared/data/dreambooth).
DREAMBOOTH = Path(os.environ.get("DREAMLAB_DREAMBOOTH_DATA",
                                 ROOT.parent / "shared" / "data" / "dreambooth"))


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a busy machine: one thread is faster than two fighting over the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dreambooth_photos() -> Path:
    if not (DREAMBOOTH / "dog").is_dir():
        pytest.fail(f"the DreamBooth photos are not at {DREAMBOOTH}; "
                    "set DREAMLAB_DREAMBOOTH_DATA to the dataset folder")
    return DREAMBOOTH


@pytest.fixture(scope="session")
def run_script():
    """Runs one of the repository's scripts (a path from its root) in a fresh Python and returns
    its stdout; a failure shows the end of the script's stderr."""
    def run(path: str, *args) -> str:
        done = subprocess.run([sys.executable, str(ROOT / path), *map(str, args)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{path} failed:\n{done.stderr[-3000:]}"
        return done.stdout
    return run


@pytest.fixture(scope="session")
def offline_path() -> str:
    """The random-weight model: the fastest way to run every line of the training code."""
    from dreamlab.offline import random_model

    return random_model()


@pytest.fixture(scope="session")
def toy_path() -> str:
    """The pretrained toy model, the lessons' offline default."""
    from dreamlab import offline_model

    return offline_model()


@pytest.fixture
def sd(offline_path):
    """A freshly loaded offline model (tests that train change its weights)."""
    from dreamlab import load_model

    return load_model(offline_path)


@pytest.fixture(scope="session")
def class_dir(tmp_path_factory, offline_path) -> Path:
    """Four class images made by the offline model, shared by the tests that need some."""
    from dreamlab import generate_class_images, load_model

    folder = tmp_path_factory.mktemp("class-images")
    generate_class_images(load_model(offline_path).pipeline(), folder, "a photo of a dog", 4,
                          batch_size=4, resolution=64, num_inference_steps=2)
    return folder
