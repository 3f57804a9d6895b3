"""Everything that can be checked before anything slow is checked first (dreamlab/preflight.py):
before the model is loaded and before a class image is drawn, and through `dreamlab train`."""

import importlib
import subprocess
import sys
from types import SimpleNamespace

import pytest

from dreamlab import DreamlabError, Settings, preflight, train

FLAGS = ["--resolution", "64", "--max-train-steps", "2", "--device", "cpu", "--num-inference-steps", "2",
         "--num-class-images", "2", "--sample-batch-size", "2"]


def settings(tmp_path, photos, **overrides):
    values = dict(model="no/model-loaded-here", instance_dir=str(photos), class_dir=str(tmp_path / "class"),
                  output_dir=str(tmp_path / "out"), resolution=64, device="cpu")
    return Settings(**{**values, **overrides})


@pytest.fixture
def photos(tmp_path, dreambooth_photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for source in sorted((dreambooth_photos / "dog").iterdir())[:3]:
        (folder / source.name).write_bytes(source.read_bytes())
    return folder


@pytest.fixture
def nothing_slow(monkeypatch):
    """Fails the test if train() gets as far as loading a model or drawing a class image."""
    train_module = importlib.import_module("dreamlab.train")  # (dreamlab.train is the function)

    def slow(*args, **kwargs):
        raise AssertionError("a model was loaded, or class images drawn, before the problem was found")
    monkeypatch.setattr(train_module, "load_model", slow)
    monkeypatch.setattr(train_module, "generate_class_images", slow)


def test_unusable_photos_are_found_before_the_model_and_the_class_images(tmp_path, photos, nothing_slow):
    for photo in photos.iterdir():
        photo.write_bytes(photo.read_bytes()[:200])  # every upload cut short
    with pytest.raises(DreamlabError, match="(?s)no images that can be used.*00.jpg.*01.jpg.*02.jpg"):
        train(settings(tmp_path, photos))
    assert not (tmp_path / "class").exists()


def test_an_output_folder_that_cannot_be_written_is_found_first(tmp_path, photos, nothing_slow):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(DreamlabError, match="cannot write to .*a-file/out: .*a-file is a file"):
        train(settings(tmp_path, photos, output_dir=str(tmp_path / "a-file" / "out")))
    with pytest.raises(DreamlabError, match="class.*a-file is a file"):
        train(settings(tmp_path, photos, class_dir=str(tmp_path / "a-file" / "class")))


def test_a_disk_without_room_for_the_run_is_found_first(tmp_path, photos, nothing_slow, monkeypatch):
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**9))
    s = settings(tmp_path, photos, model="stable-diffusion-v1-5/stable-diffusion-v1-5",
                 checkpointing_steps=100)
    need = sum(preflight.folders_written(s).values())
    assert need > 10 * 10**9  # SD 1.5 in float32 and three exact checkpoints of its UNet
    with pytest.raises(DreamlabError, match=r"has 1.0 GB free, and this run writes about \d+\.\d GB"):
        train(s)
    compact = settings(tmp_path, photos, model="stable-diffusion-v1-5/stable-diffusion-v1-5",
                       checkpointing_steps=100, compact_checkpoints=True, save_precision="fp16")
    assert sum(preflight.folders_written(compact).values()) < need / 3  # what the course writes on Drive


def test_a_gpu_asked_for_on_a_machine_without_one_is_an_error(tmp_path, photos, nothing_slow):
    import torch

    if torch.cuda.is_available():
        return  # (a machine with a GPU has one to give)
    with pytest.raises(DreamlabError, match="device='cuda': this machine has no CUDA GPU"):
        train(settings(tmp_path, photos, device="cuda"))


def run(*args):
    return subprocess.run([sys.executable, "-m", "dreamlab", *args], capture_output=True, text=True,
                          timeout=600)


def test_dreamlab_train_says_which_photos_it_uses_and_skips(tmp_path, photos, offline_path):
    (photos / "00.txt").write_bytes("\ufeffa photo of sks dog on a sofa".encode())  # Notepad's BOM
    (photos / "broken.jpg").write_bytes(b"not a photo")
    (photos / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (photos / "01.txt").write_bytes("a photo of sks dog in Sao Paulo, cafe".encode("latin-1") + b"\xe9")
    common = ["train", "--model", offline_path, "--instance-dir", str(photos), "--output-dir",
              str(tmp_path / "out"), "--class-dir", str(tmp_path / "class"), *FLAGS]
    done = run(*common)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "01.txt" in done.stderr and "UTF-8" in done.stderr  # named, and what to do
    assert not (tmp_path / "class").exists()  # before any class image

    (photos / "01.txt").write_text("a photo of sks dog in Sao Paulo", encoding="utf-8")
    done = run(*common)
    assert done.returncode == 0, done.stderr[-2000:]
    used = done.stdout[done.stdout.index("using 3 photos"):]
    assert 'caption: "a photo of sks dog on a sofa"' in used and "\ufeff" not in done.stdout
    assert "broken.jpg" in used.split("skipping")[1]  # skipped, and named
