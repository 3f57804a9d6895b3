import json
from pathlib import Path

import numpy as np
import pytest
from accelerate import Accelerator
from diffusers import PNDMScheduler
from PIL import Image

from dreamlab import DreamlabError, Settings, class_images, generate_class_images
from dreamlab.class_images import model_name
from dreamlab.settings import SD15
from dreamlab.train import prepare_class_images

DOG = "a photo of a dog"
FAST = dict(resolution=64, num_inference_steps=2)


def record(folder: Path) -> dict:
    return json.loads((folder / "class_images.json").read_text())


def pixels(files) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), dtype=int) for p in files])


def forbid_drawing(monkeypatch):
    """Any picture drawn from now on fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a class image was drawn")
    monkeypatch.setattr(class_images, "generate", refuse)


def count_unet_calls(monkeypatch, pipe, stop_at: int | None = None) -> list[str]:
    """Each UNet call notes the pipeline's scheduler; call number `stop_at` is interrupted."""
    calls, forward = [], pipe.unet.forward

    def counted(*args, **kwargs):
        calls.append(type(pipe.scheduler).__name__)
        if len(calls) == stop_at:
            raise KeyboardInterrupt  # the kernel's stop button
        return forward(*args, **kwargs)
    monkeypatch.setattr(pipe.unet, "forward", counted)
    return calls


def test_the_folder_records_prompt_and_model_and_the_same_pair_reuses_them(tmp_path, sd, offline_path,
                                                                             monkeypatch):
    folder = tmp_path / "class"
    first = generate_class_images(sd.pipeline(), folder, DOG, 3, batch_size=2, **FAST)
    assert record(folder) == {
        "prompt": DOG, "model": str(Path(offline_path).resolve()),  # the folder the pipeline came from
        "drawn": [{"first": 0, "count": 3, "resolution": 64, "sampler": "DPMSolverMultistepScheduler",
                   "steps": 2, "guidance_scale": 7.5, "seed": 0, "precision": "float32"}]}
    assert not (folder / "class_prompt.txt").exists()
    forbid_drawing(monkeypatch)
    # the same prompt and model, named as a train() run names it (Settings.model): the same files
    again = generate_class_images(sd.pipeline(), folder, DOG, 3, model=offline_path, **FAST)
    assert again == first and record(folder)["drawn"][0]["count"] == 3
    with pytest.warns(UserWarning, match=r"drawn at \[64\] px, not 128"):
        generate_class_images(sd.pipeline(), folder, DOG, 3, resolution=128)


def test_a_full_folder_is_only_read_so_a_workshop_can_share_it(tmp_path, sd, offline_path, monkeypatch):
    """A room of learners uses the instructor's class images through a shared Drive folder: using a
    full folder (drawing, and the checks before training) writes nothing into it."""
    from dreamlab import preflight, toyworld

    folder = tmp_path / "shared"
    generate_class_images(sd.pipeline(), folder, DOG, 3, batch_size=3, **FAST)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    forbid_drawing(monkeypatch)
    generate_class_images(sd.pipeline(), folder, DOG, 3, model=offline_path, **FAST)
    s = toyworld.dreambooth_settings(model=offline_path, class_dir=str(folder), class_prompt=DOG,
                                     num_class_images=3, output_dir=str(tmp_path / "out"))
    preflight.check_folders(s)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    # and the prompt as a learner may type it: SD's tokenizer lower-cases, so it is the same prompt
    typed = generate_class_images(sd.pipeline(), folder, DOG.capitalize(), 3, model=offline_path, **FAST)
    assert len(typed) == 3


def test_another_model_is_refused_naming_both(tmp_path, sd, offline_path):
    folder = tmp_path / "class"
    generate_class_images(sd.pipeline(), folder, DOG, 1, **FAST)
    with pytest.raises(DreamlabError, match=rf"made for '{DOG}' by {Path(offline_path).resolve()}, "
                                            rf"not for '{DOG}' by someone/another-sd\. .*another class_dir"):
        generate_class_images(sd.pipeline(), folder, DOG, 1, model="someone/another-sd", **FAST)
    with pytest.raises(DreamlabError, match="not for 'a photo of a cat' by"):
        generate_class_images(sd.pipeline(), folder, "a photo of a cat", 1, **FAST)
    assert record(folder)["model"] == str(Path(offline_path).resolve())  # untouched


def test_models_are_named_by_hub_id_or_full_path(tmp_path, sd, monkeypatch):
    # load_model's downloads live in the hub's cache: the folder is named by its hub id
    cache = tmp_path / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    assert model_name(str(cache / "snapshots" / "3a1b")) == SD15
    assert model_name("runwayml/stable-diffusion-v1-5") == SD15  # the old id of the same weights
    (tmp_path / "my-sd").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_name("my-sd") == str((tmp_path / "my-sd").resolve())
    pipe = sd.pipeline()
    pipe.unet.register_to_config(_name_or_path=None)  # as if built in memory
    with pytest.raises(DreamlabError, match=r"model=\.\.\."):
        generate_class_images(pipe, tmp_path / "class", DOG, 1, **FAST)


def test_a_folder_from_before_the_record_is_still_used(tmp_path, sd, offline_path, monkeypatch):
    forbid_drawing(monkeypatch)
    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (i * 100, 0, 0)).save(folder / f"class-{i:05d}.png")
    (folder / "class_prompt.txt").write_text(DOG + "\n")
    with pytest.raises(DreamlabError, match=f"{folder} holds images made for '{DOG}', not for 'a photo of a"):
        generate_class_images(sd.pipeline(), folder, "a photo of a cat", 2, **FAST)
    files = generate_class_images(sd.pipeline(), folder, DOG, 2, **FAST)
    assert [p.name for p in files] == ["class-00000.png", "class-00001.png"]
    assert record(folder) == {"prompt": DOG, "model": str(Path(offline_path).resolve()), "drawn": [],
                              "found": "2 images were already there (their model not recorded)"}
    assert not (folder / "class_prompt.txt").exists()  # the new record replaces it


def test_an_interruption_in_a_batch_keeps_the_batches_before_and_the_run_continues(tmp_path, sd,
                                                                                     monkeypatch):
    folder, pipe = tmp_path / "class", sd.pipeline()
    own = pipe.scheduler
    calls = count_unet_calls(monkeypatch, pipe, stop_at=4)  # batch 2's second step (2 steps a batch)
    with pytest.raises(KeyboardInterrupt):
        generate_class_images(pipe, folder, DOG, 3, batch_size=2, **FAST)
    assert len(calls) == 4 and pipe.scheduler is own
    assert sorted(p.name for p in folder.iterdir()) == ["class-00000.png", "class-00001.png",
                                                        "class_images.json"]
    assert record(folder)["drawn"][0]["count"] == 2
    (folder / "class-00002.png.part").write_bytes(b"half a picture")  # cut short while saving
    monkeypatch.undo()
    files = generate_class_images(pipe, folder, DOG, 3, batch_size=2, **FAST)
    assert [p.name for p in files] == [f"class-{i:05d}.png" for i in range(3)]
    assert not list(folder.glob("*.part"))
    assert [(d["first"], d["count"]) for d in record(folder)["drawn"]] == [(0, 3)]  # one run, continued
    # the same pictures as one uninterrupted run in one batch
    whole = generate_class_images(pipe, tmp_path / "whole", DOG, 3, batch_size=3, **FAST)
    assert np.abs(pixels(files) - pixels(whole)).max() <= 2


def test_each_image_has_its_seed_whatever_the_batch_size(tmp_path, sd):
    pipe = sd.pipeline()
    one = pixels(generate_class_images(pipe, tmp_path / "a", DOG, 2, batch_size=1, **FAST))
    two = pixels(generate_class_images(pipe, tmp_path / "b", DOG, 2, batch_size=2, **FAST))
    other_seed = pixels(generate_class_images(pipe, tmp_path / "c", DOG, 2, seed=1, **FAST))
    assert np.abs(one - two).max() <= 2  # (batched arithmetic may round a value differently)
    assert np.abs(one[0] - one[1]).mean() > 5 and np.abs(one - other_seed).mean() > 5


def test_the_sampler_is_dpm_solver_whatever_the_pipeline_unless_asked(tmp_path, sd, monkeypatch):
    pndm = PNDMScheduler.from_config(sd.noise_scheduler.config)
    pipe = sd.pipeline(scheduler=pndm)
    calls = count_unet_calls(monkeypatch, pipe)
    generate_class_images(pipe, tmp_path / "a", DOG, 1, resolution=64, num_inference_steps=3)
    assert calls == ["DPMSolverMultistepScheduler"] * 3 and pipe.scheduler is pndm  # its own, put back
    calls.clear()
    generate_class_images(pipe, tmp_path / "b", DOG, 1, resolution=64, num_inference_steps=3,
                          scheduler=pipe.scheduler)
    assert calls == ["PNDMScheduler"] * 4  # PNDM's 3 steps take 4 passes
    assert record(tmp_path / "b")["drawn"][0]["sampler"] == "PNDMScheduler"


def test_training_names_the_model_of_its_settings(tmp_path, sd, offline_path):
    s = Settings(model=offline_path, class_dir=str(tmp_path / "class"), num_class_images=1,
                 sample_batch_size=1, device="cpu", **FAST)
    prepare_class_images(s, sd, Accelerator(cpu=True))
    assert record(tmp_path / "class")["model"] == str(Path(offline_path).resolve())


def test_the_benchmark_runs_without_diffusers_script(run_script):
    rows = [json.loads(line) for line in run_script(
        "benchmarks/class_images.py", "--models", "toy", "--images", "2", "--batch", "2", "--rounds", "1",
        "--quality-images", "2", "--reference-steps", "10").splitlines()]
    speed = {r["contender"]: r for r in rows if r["measure"] == "speed"}
    assert set(speed) == {"dreamlab", "diffusers-call"}  # no script given: its pipeline call only
    assert all(r["resolution"] == 64 and r["s_per_image"] > r["drawing_s_per_image"] > 0
               for r in speed.values())
    quality = {r["pictures"]: r for r in rows if r["measure"] == "quality"}
    assert [(q["sampler"], q["steps"], q["first_timestep"]) for q in quality.values()] == [
        ("DPMSolverMultistepScheduler", 25, 951), ("PNDMScheduler", 50, 981),
        ("DPMSolverMultistepScheduler", 10, 901), ("PNDMScheduler", 25, 961)]
    assert all(0 <= q["ball"] <= 1 and q["rms_to_converged"] >= 0 for q in quality.values())
    summary = rows[-1]
    assert summary["measure"] == "summary" and summary["toy"]["vs"] == "diffusers-call"
    assert summary["toy"]["cpu_time_ratio"] > 0 and len(speed["dreamlab"]["per_round"]["cpu"]) == 1
    assert "--diffusers-script" in summary["note"]
    assert isinstance(summary["quality"]["same_class_statistics"], bool)
