import os
import shutil
import subprocess
import sys

from PIL import Image

TRAIN_FLAGS = ["--resolution", "64", "--max-train-steps", "3", "--learning-rate", "1e-3",
               "--device", "cpu", "--num-inference-steps", "2", "--num-class-images", "2",
               "--sample-batch-size", "2"]


def run(*args, launcher=(sys.executable, "-m")):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=600)


def test_train_then_sample_from_the_command_line(tmp_path, offline_path, dreambooth_photos):
    out = tmp_path / "model"
    done = run("dreamlab", "train", "--model", offline_path, "--instance-dir",
               str(dreambooth_photos / "dog"), "--class-dir", str(tmp_path / "class"),
               "--output-dir", str(out), *TRAIN_FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"saved the fine-tuned model (3 steps) to {out}" in done.stdout
    assert len(list((tmp_path / "class").glob("*.png"))) == 2  # prior preservation is on by default
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists()

    grid = tmp_path / "grid.png"
    done = run("dreamlab", "sample", "--model", str(out), "--prompt", "a photo of sks dog",
               "--prompt", "a photo of a dog", "--seeds", "0", "1", "2", "--resolution", "64",
               "--steps", "2", "--device", "cpu", "--out", str(grid))
    assert done.returncode == 0, done.stderr[-3000:]
    assert Image.open(grid).size == (3 * 64, 2 * 64)


def test_engine_settings_from_the_command_line(tmp_path, offline_path, dreambooth_photos):
    out = tmp_path / "lora"
    done = run("dreamlab", "train", "--model", offline_path, "--instance-dir", str(dreambooth_photos / "dog"),
               "--no-prior-preservation", "--output-dir", str(out), *TRAIN_FLAGS, "--lora",
               "--lora-rank", "2", "--train-identifier", "--checkpointing-steps", "2", "--validation-prompts",
               "a photo of sks dog", "a photo of zwx cat", "--validation-steps", "3",
               "--more-subject", str(dreambooth_photos / "cat2"), "a photo of zwx cat",
               str(tmp_path / "cats"), "a photo of a cat")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "lora-checkpoints" / "checkpoint-000002").is_dir()
    assert sorted(p.name for p in (tmp_path / "lora-samples").iterdir()) == ["step-000000.png",
                                                                             "step-000003.png"]
    done = run("dreamlab", "train", "--model", offline_path, "--instance-dir", str(dreambooth_photos / "dog"),
               "--no-prior-preservation", "--output-dir", str(out), *TRAIN_FLAGS, "--lora",
               "--lora-rank", "2", "--train-identifier", "--resume-from", "latest", "--max-train-steps", "4",
               "--more-subject", str(dreambooth_photos / "cat2"), "a photo of zwx cat",
               str(tmp_path / "cats"), "a photo of a cat")  # the same run, 4 steps instead of 3
    assert done.returncode == 0 and "resumed from" in done.stdout, done.stderr[-3000:]
    card = (out / "README.md").read_text()
    assert "instance_prompt: a photo of sks dog" in card and "lora" in card
    assert (out / "identifier_embeddings.safetensors").exists() and "identifier_embeddings" in card

    kohya = tmp_path / "kohya.safetensors"
    done = run("dreamlab", "export", "--model", str(out), "--kohya-lora", str(kohya))
    assert done.returncode == 2 and "--base" in done.stderr
    done = run("dreamlab", "export", "--model", str(out), "--base", offline_path, "--kohya-lora", str(kohya),
               "--single-file", str(tmp_path / "merged.safetensors"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert kohya.exists() and (tmp_path / "merged.safetensors").exists()
    assert "not the word learned for the identifier" in done.stdout  # the merged file has it


def test_bad_input_gets_one_clear_line_not_a_traceback(tmp_path, offline_path):
    (tmp_path / "photos").mkdir()
    done = run("dreamlab", "train", "--model", offline_path, "--instance-dir", str(tmp_path / "photos"),
               "--no-prior-preservation", *TRAIN_FLAGS)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"dreamlab: error: instance folder {tmp_path / 'photos'} has no images" in done.stderr

    done = run("dreamlab", "train", "--model", str(tmp_path), "--instance-dir", str(tmp_path), *TRAIN_FLAGS)
    assert done.returncode == 2 and "not a Stable Diffusion model folder" in done.stderr

    done = run("dreamlab", "train", "--resolution", "65", "--instance-dir", str(tmp_path))
    assert done.returncode == 2 and "resolution=65" in done.stderr and "Traceback" not in done.stderr


def test_every_setting_is_a_flag_with_the_same_default():
    from dreamlab.settings import setting_names
    done = run("dreamlab", "train", "--help")
    flags = done.stdout.replace("\n", " ")
    for name in setting_names():
        flag = "--more-subject" if name == "more_subjects" else "--" + name.replace("_", "-")
        assert flag in flags, name
    assert "--no-prior-preservation" in flags and "default: 400" in flags


def test_runs_under_accelerate_launch(tmp_path, offline_path, dreambooth_photos):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accelerate, "accelerate's launcher is installed with the package"
    done = run("--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "dreamlab", "train", "--model", offline_path,
               "--instance-dir", str(dreambooth_photos / "dog"), "--no-prior-preservation",
               "--output-dir", str(tmp_path / "out"), *TRAIN_FLAGS,
               launcher=(accelerate, "launch"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "model_index.json").exists()


def test_two_processes_checkpoint_their_own_noise_and_resume_exactly(tmp_path, offline_path,
                                                                     dreambooth_photos):
    """Two CPU processes (DDP over gloo, as several GPUs would run; torchrun starts them, since
    `accelerate launch --cpu` starts one): each checkpoint holds both processes' noise
    generators, and a run resumed from step 2 ends where the whole run ended."""
    from safetensors.torch import load_file

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))

    def launch(out, *more):
        done = run("--nproc_per_node", "2", "-m", "dreamlab", "train", "--model", offline_path,
                   "--instance-dir", str(dreambooth_photos / "dog"), "--no-prior-preservation",
                   "--output-dir", str(out), *TRAIN_FLAGS, "--max-train-steps", "4",
                   "--checkpointing-steps", "2", "--checkpoints-total-limit", "3", *more,
                   launcher=(torchrun,))
        assert done.returncode == 0, done.stderr[-3000:]
        return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")

    whole = launch(tmp_path / "whole")
    step2 = tmp_path / "whole-checkpoints" / "checkpoint-000002"
    rng = [load_file(step2 / f"rng-{i}.safetensors")["noise"] for i in (0, 1)]
    assert not (rng[0] == rng[1]).all()  # the processes draw different noise
    shutil.copytree(step2, tmp_path / "resumed-checkpoints" / step2.name)
    resumed = launch(tmp_path / "resumed", "--resume-from", "latest")
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) < 1e-6


def test_command_line_gives_back_the_same_settings():
    """Lesson 3 prints the command of its run: read back by the command line, it is the same run."""
    import shlex

    from dreamlab import Settings
    from dreamlab.cli import command_line, make_parser, settings_from_flags

    settings = Settings(instance_dir="my photos/dog", instance_prompt="a photo of sks dog",
                        max_train_steps=250, learning_rate=2e-6, prior_preservation=False,
                        gradient_checkpointing=True,
                        validation_prompts=["a photo of sks dog on the beach", "sks dog, oil painting"],
                        more_subjects=[dict(instance_dir="cat", instance_prompt="a photo of zwx cat",
                                            class_dir="cats", class_prompt="a photo of a cat")])
    line = command_line(settings)
    words = shlex.split(line)
    assert words[:2] == ["dreamlab", "train"] and "--no-prior-preservation" in words
    assert "--lora" not in words  # only what differs from the defaults
    assert settings_from_flags(make_parser().parse_args(words[1:])) == settings
    assert command_line(Settings()) == "dreamlab train"
