"""The training engine's settings (issue 4), each through the small random-weight model."""

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from dreamlab import DreamlabError, Settings, generate, load_model, runs, train, training_step
from dreamlab.checkpoints import checkpoints, find_checkpoint
from dreamlab.data import DreamBoothDataset, collate, list_images

train_module = importlib.import_module("dreamlab.train")  # the module, not dreamlab.train()


def settings(tmp_path, offline_path, photos, **overrides):
    values = dict(model=offline_path, resolution=64, max_train_steps=4, learning_rate=1e-3,
                  device="cpu", prior_preservation=False, num_inference_steps=2, center_crop=False,
                  instance_dir=str(photos), class_dir=str(tmp_path / "class"),
                  output_dir=str(tmp_path / "out"))
    values.update(overrides)
    return Settings(**values)


def weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def max_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_lora_with_the_identifiers_word_saves_the_word_beside_the_adapters(tmp_path, offline_path,
                                                                           dreambooth_photos):
    from dreamlab.identifier import IDENTIFIER_FILE, load_identifier

    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", lora=True, train_identifier=True,
                 identifier_lr=1e-2)
    result = train(s, sd=load_model(offline_path))
    words = load_file(result.output_dir.parent / IDENTIFIER_FILE)
    assert list(words) == ["sks</w>"]

    pipe = load_model(offline_path).pipeline()
    pipe.load_lora_weights(str(result.output_dir.parent))
    prompt, seed = ["a photo of sks dog"], [0]
    adapters_only = generate(pipe, prompt, seed, 64, 2)[0]
    assert load_identifier(pipe, result.output_dir.parent) == ["sks</w>"]
    loaded = generate(pipe, prompt, seed, 64, 2)[0]
    trained = generate(result.sd.pipeline(), prompt, seed, 64, 2)[0]
    diff = torch.tensor(list(loaded.tobytes())).float() - torch.tensor(list(trained.tobytes())).float()
    assert diff.abs().max() <= 2 and loaded.tobytes() != adapters_only.tobytes()


def test_lora_trains_only_adapters_and_loads_back_with_diffusers(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", lora=True, lora_rank=4,
                 train_text_encoder=True)
    base = load_model(offline_path)
    before = weights(base.unet)
    result = train(s, sd=load_model(offline_path))
    after = {k.replace(".base_layer", ""): v for k, v in result.sd.unet.state_dict().items()
             if "lora_" not in k}
    assert max_difference(before, after) == 0  # the model itself did not move
    lora = load_file(result.output_dir)
    assert result.output_dir.name == "pytorch_lora_weights.safetensors"
    assert any(k.startswith("unet.") for k in lora) and any(k.startswith("text_encoder.") for k in lora)
    assert sum(v.numel() for v in lora.values()) < 0.2 * sum(v.numel() for v in before.values())

    pipe = base.pipeline()
    pipe.load_lora_weights(str(result.output_dir.parent))
    prompt, seed = ["a photo of sks dog"], [0]
    loaded = generate(pipe, prompt, seed, 64, 2)[0]
    trained = generate(result.sd.pipeline(), prompt, seed, 64, 2)[0]
    plain = generate(load_model(offline_path).pipeline(), prompt, seed, 64, 2)[0]
    diff = torch.tensor(list(loaded.tobytes())).float() - torch.tensor(list(trained.tobytes())).float()
    assert diff.abs().max() <= 2 and loaded.tobytes() != plain.tobytes()


def test_text_encoder_has_its_own_rate_and_stops_at_its_step(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", train_text_encoder=True,
                 text_encoder_lr=1e-4, text_encoder_stop_step=2)
    groups = train_module.parameter_groups(s, {"unet.a": torch.nn.Parameter(torch.ones(1)),
                                               "text_encoder.b": torch.nn.Parameter(torch.ones(1))})
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    seen = {}
    sd = load_model(offline_path)
    base = weights(sd.text_encoder)
    result = train(s, sd=sd, save=False,
                   on_step=lambda step, logs: seen.setdefault(step, weights(sd.text_encoder)))
    assert max_difference(base, seen[2]) > 0  # trained for two steps...
    assert max_difference(seen[2], weights(result.sd.text_encoder)) == 0  # ...then frozen
    with pytest.raises(DreamlabError, match="text_encoder_stop_step.*train_text_encoder=True"):
        settings(tmp_path, offline_path, dreambooth_photos / "dog", text_encoder_stop_step=2).validate()


@pytest.mark.parametrize("saver", [dict(gradient_checkpointing=True), dict(attention="math"),
                                   dict(cache_latents=True)])
def test_memory_savers_give_the_same_training(saver, tmp_path, offline_path, dreambooth_photos):
    """Checkpointing recomputes, math attention is the same sum, cached latents are the VAE's
    same output: the losses must match the plain run (with centred crops, which caching keeps)."""
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", center_crop=True,
                 train_text_encoder=not saver.get("cache_latents"), prior_preservation=True,
                 class_dir=str(tmp_path / "class"), num_class_images=2, sample_batch_size=2)
    plain = train(s, sd=load_model(offline_path), save=False).history
    saved = train(Settings(**{**s.to_dict(), **saver}), sd=load_model(offline_path), save=False).history
    assert [h["loss"] for h in saved] == pytest.approx([h["loss"] for h in plain], rel=1e-4)


def test_cached_latents_never_run_the_vae_or_text_encoder_while_training(
        tmp_path, offline_path, dreambooth_photos, monkeypatch):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", cache_latents=True)
    sd = load_model(offline_path)
    encoded = []
    real_encode = sd.vae.encode
    monkeypatch.setattr(sd.vae, "encode", lambda *a, **k: encoded.append(1) or real_encode(*a, **k))
    calls = []
    sd.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    train(s, sd=sd, save=False)
    photos = len(list((dreambooth_photos / "dog").glob("*.jp*g")))
    assert len(encoded) == photos and len(calls) == 1  # each photo once, the one prompt once


def test_the_step_in_backward_equals_the_usual_one(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_grad_norm=0, train_text_encoder=True)
    usual = train(s, sd=load_model(offline_path), save=False).sd
    fused = train(Settings(**{**s.to_dict(), "step_in_backward": True}), sd=load_model(offline_path),
                  save=False).sd
    assert max_difference(weights(usual.unet), weights(fused.unet)) < 1e-6
    assert max_difference(weights(usual.text_encoder), weights(fused.text_encoder)) < 1e-6
    with pytest.raises(DreamlabError, match="step_in_backward.*gradient_accumulation_steps=1"):
        Settings(**{**s.to_dict(), "step_in_backward": True, "gradient_accumulation_steps": 2}).validate()


def test_8bit_adam_on_a_cpu_is_a_clear_error(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", use_8bit_adam=True)
    with pytest.raises(DreamlabError, match="use_8bit_adam.*CUDA.*use_8bit_adam=False"):
        train(s, sd=load_model(offline_path), save=False)


def test_offset_noise_and_min_snr_change_the_loss_as_they_should(sd, dreambooth_photos):
    ds = DreamBoothDataset(dreambooth_photos / "dog", "a photo of sks dog", sd.tokenizer, 64)
    batch = collate([ds[i] for i in range(4)])

    def loss(**options):
        return training_step(sd, batch, generator=torch.Generator().manual_seed(0), **options)[1]["loss"]

    plain = loss()
    assert loss(min_snr_gamma=1e9) == pytest.approx(plain, rel=1e-6)  # a cap never reached: no change
    assert loss(min_snr_gamma=1.0) < plain  # weights min(snr, 1) / snr <= 1
    assert loss(offset_noise=0.5) != pytest.approx(plain)


@pytest.mark.parametrize("text_encoder", [dict(train_text_encoder=True), dict(train_identifier=True)])
def test_checkpoints_every_n_steps_keep_the_last_k_and_resume_exactly(tmp_path, offline_path,
                                                                       dreambooth_photos, text_encoder,
                                                                       capsys):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=6,
                 checkpointing_steps=2, checkpoints_total_limit=2, **text_encoder)
    whole = train(s, sd=load_model(offline_path), save=False)
    folder = runs.checkpoint_dir(s)
    assert [p.name for p in checkpoints(folder)] == ["checkpoint-000004", "checkpoint-000006"]
    assert find_checkpoint("latest", folder).name == "checkpoint-000006"
    state = json.loads((folder / "checkpoint-000004" / "state.json").read_text())
    assert state["step"] == 4 and len(state["history"]) == 4

    # Resume from step 4 (delete the later one): the same last two steps, the same weights.
    (folder / "checkpoint-000006" / "state.json").unlink()
    resumed = train(Settings(**{**s.to_dict(), "resume_from": "latest"}), sd=load_model(offline_path),
                    save=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert max_difference(weights(whole.sd.unet), weights(resumed.sd.unet)) < 1e-6
    assert max_difference(weights(whole.sd.text_encoder), weights(resumed.sd.text_encoder)) < 1e-6

    with pytest.raises(DreamlabError, match="earlier run's checkpoints.*resume_from='latest'"):
        train(s, sd=load_model(offline_path), save=False)  # a fresh run must not prune them

    # another learning rate is another run: "latest" starts it afresh, and says so
    changed = Settings(**{**s.to_dict(), "resume_from": "latest", "learning_rate": 2e-3})
    other = train(changed, sd=load_model(offline_path), save=False)
    assert "starting a new run" in capsys.readouterr().out and len(other.history) == 6
    assert other.history[0]["loss"] == whole.history[0]["loss"] and other.history[1] != whole.history[1]
    # a checkpoint asked for by name must be this run's
    swapped = {"train_text_encoder": s.train_identifier, "train_identifier": s.train_text_encoder}
    named = Settings(**{**s.to_dict(), "resume_from": str(folder / "checkpoint-000006"), **swapped})
    with pytest.raises(DreamlabError, match="other settings: .*train_identifier=(True|False) \\(now"):
        train(named, sd=load_model(offline_path), save=False)


def test_a_crash_while_writing_a_checkpoint_leaves_the_last_one_intact(
        tmp_path, offline_path, dreambooth_photos, monkeypatch):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=4, checkpointing_steps=2)
    real_save = train_module.checkpoints.save_file

    def crash_at_step_4(tensors, path, *args, **kwargs):
        if "000004" in str(path) and path.name == "optimizer.safetensors":
            raise OSError("disk gone")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(train_module.checkpoints, "save_file", crash_at_step_4)
    with pytest.raises(DreamlabError, match="could not write checkpoint .*checkpoint-000004.*disk gone.*"
                                            "intact: \\['checkpoint-000002'\\]"):
        train(s, sd=load_model(offline_path), save=False)
    folder = runs.checkpoint_dir(s)
    assert find_checkpoint("latest", folder).name == "checkpoint-000002"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-000002"]  # no half-written folder left


KILLED_RUN = """
import os, signal, sys
from dreamlab import Settings, train
s = Settings(**{settings})
def on_step(step, logs):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
train(s, on_step=on_step if {kill} else None, save=False)
"""


def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=8,
                 train_text_encoder=True, checkpointing_steps=3)
    code = KILLED_RUN.format(settings=s.to_dict(), kill_at=5, kill=True)
    # the same number of threads as here: float sums split across threads round differently
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
    assert find_checkpoint("latest", runs.checkpoint_dir(s)).name == "checkpoint-000003"

    resumed = train(Settings(**{**s.to_dict(), "resume_from": "latest"}), sd=load_model(offline_path),
                    save=False)
    elsewhere = Settings(**{**s.to_dict(), "output_dir": str(tmp_path / "uninterrupted")})
    whole = train(elsewhere, sd=load_model(offline_path), save=False)
    assert len(resumed.history) == 8
    assert max_difference(weights(whole.sd.unet), weights(resumed.sd.unet)) < 1e-6
    assert max_difference(weights(whole.sd.text_encoder), weights(resumed.sd.text_encoder)) < 1e-6


def test_samples_while_training_use_the_same_seeds_every_time(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", validation_steps=2,
                 validation_prompts=["a photo of sks dog", "a photo of sks dog on the beach"],
                 num_validation_images=2)
    seen = {}
    train(s, sd=load_model(offline_path), save=False,
          on_sample=lambda step, images: seen.__setitem__(step, images))
    assert sorted(seen) == [0, 2, 4] and all(len(images) == 4 for images in seen.values())
    files = sorted(p.name for p in runs.samples_dir(s).iterdir())
    assert files == ["step-000000.png", "step-000002.png", "step-000004.png"]
    # step 0 is the untouched model with seeds 0, 1: exactly what generate() draws with them
    prompts = [p for p in s.validation_prompts for _ in range(2)]
    base = generate(load_model(offline_path).pipeline(), prompts, [0, 1, 0, 1], 64, 2)
    assert [im.tobytes() for im in seen[0]] == [im.tobytes() for im in base]
    assert seen[4][0].tobytes() != seen[0][0].tobytes()  # training changed the picture
    with pytest.raises(DreamlabError, match="validation_prompts"):
        settings(tmp_path, offline_path, dreambooth_photos / "dog", validation_steps=2).validate()


def test_interrupting_saves_a_checkpoint_and_returns_the_model(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=10)

    def press_stop(step, logs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Jupyter's and Colab's stop button sends

    result = train(s, sd=load_model(offline_path), on_step=press_stop)
    assert result.stopped_early and len(result.history) == 3
    assert result.checkpoint.name == "checkpoint-000003"
    assert (result.output_dir / "model_index.json").exists()
    images = generate(result.sd.pipeline(), ["a photo of sks dog"], [0], 64, 2)
    assert images[0].size == (64, 64)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(
        tmp_path, offline_path, dreambooth_photos, monkeypatch):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=6, checkpointing_steps=2)
    real_step, calls = train_module.training_step, []

    def nan_at_step_4(*args, **kwargs):
        loss, logs = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            loss, logs = loss * float("nan"), {**logs, "loss": float("nan")}
        return loss, logs

    monkeypatch.setattr(train_module, "training_step", nan_at_step_4)
    sd = load_model(offline_path)
    seen = {}
    with pytest.raises(DreamlabError, match="nan at step 3.*learning rate.*fp16.*checkpoint-000002.*intact"):
        train(s, sd=sd, save=False, on_step=lambda step, logs: seen.setdefault(step, weights(sd.unet)))
    assert max_difference(seen[3], weights(sd.unet)) == 0  # the bad step was not applied
    saved = load_file(runs.checkpoint_dir(s) / "checkpoint-000002" / "trained.safetensors")
    assert max_difference({k: v for k, v in saved.items()},
                          {f"unet.{k}": v for k, v in seen[2].items()}) == 0


def test_several_subjects_and_a_caption_train_in_one_run(tmp_path, offline_path, dreambooth_photos,
                                                         monkeypatch):
    cat = tmp_path / "cat"
    cat.mkdir()
    for photo in list_images(dreambooth_photos / "cat2")[:2]:
        (cat / photo.name).write_bytes(photo.read_bytes())
    (cat / (sorted(cat.iterdir())[0].stem + ".txt")).write_text("a photo of zwx cat on a sofa")
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", prior_preservation=True,
                 class_dir=str(tmp_path / "dogs"), num_class_images=2, sample_batch_size=2,
                 train_batch_size=2, max_train_steps=6, cache_latents=False,  # (the batches keep their words)
                 more_subjects=[dict(instance_dir=str(cat), instance_prompt="a photo of zwx cat",
                                     class_dir=str(tmp_path / "cats"), class_prompt="a photo of a cat")])
    prompts = set()
    real_step = train_module.training_step

    def record(sd, batch, *args, **kwargs):
        prompts.update(sd.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True))
        return real_step(sd, batch, *args, **kwargs)

    monkeypatch.setattr(train_module, "training_step", record)
    train(s, sd=load_model(offline_path), save=False)
    for folder in ("cats", "dogs"):  # each subject's own class images
        assert len(list((tmp_path / folder).glob("*.png"))) == 2
    assert {"a photo of sks dog", "a photo of zwx cat", "a photo of zwx cat on a sofa",
            "a photo of a dog", "a photo of a cat"} <= prompts
    with pytest.raises(DreamlabError, match=r"more_subjects\[0\].*class_dir"):
        Settings(**{**s.to_dict(), "more_subjects": [dict(instance_dir=str(cat),
                                                          instance_prompt="a photo of zwx cat")]}).validate()


def test_the_step_in_backward_unscales_fp16_gradients_skips_overflow_and_grows_the_scale():
    from dreamlab.optimizer import StepInBackward

    torch.manual_seed(0)
    plain, early = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    early.load_state_dict(plain.state_dict())
    x = torch.randn(5, 4)
    reference = torch.optim.AdamW(plain.parameters(), lr=0.1)
    plain(x).pow(2).mean().backward()
    reference.step()
    # fp16's loss scaler (accelerate makes it on a GPU only; torch's runs on the CPU too)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    # buckets of one byte: each weight tensor is stepped, and its gradient freed, inside backward
    step = StepInBackward(torch.optim.AdamW(early.parameters(), lr=0.1), scaler=scaler, bucket_bytes=1)
    scaler.scale(early(x).pow(2).mean()).backward()  # what accelerate's backward does under fp16
    assert all(p.grad is None for p in early.parameters())  # freed as soon as used, before end_step
    assert torch.allclose(plain.weight, early.weight) and torch.allclose(plain.bias, early.bias)
    assert not step.end_step() and scaler.get_scale() == 1024.0

    before = early.weight.detach().clone()
    scaler.scale(early(x * float("inf")).sum()).backward()
    assert step.end_step() and scaler.get_scale() == 512.0  # overflow: skipped, scale halved
    assert torch.equal(early.weight, before)
    for _ in range(2):  # growth_interval steps without an overflow: the scale doubles again
        scaler.scale(early(x).pow(2).mean()).backward()
        assert not step.end_step()
    assert scaler.get_scale() == 1024.0


def test_a_run_that_fails_leaves_no_step_in_backward_hooks_on_the_model(tmp_path, offline_path,
                                                                        dreambooth_photos):
    """A notebook keeps its model after an error; hooks left on it would step a dead optimizer."""
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", step_in_backward=True)
    sd = load_model(offline_path)

    def fail(step, logs):
        raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError, match="stopped by the test"):
        train(s, sd=sd, on_step=fail, save=False)
    assert not [p for p in sd.unet.parameters() if p._post_accumulate_grad_hooks]


def test_the_step_in_backward_steps_a_bucket_of_gradients_at_a_time():
    from dreamlab.optimizer import StepInBackward

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    early = torch.nn.Sequential(*[torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)])
    early.load_state_dict(plain.state_dict())
    x = torch.randn(5, 8)
    reference = torch.optim.AdamW(plain.parameters(), lr=0.1)
    step = StepInBackward(torch.optim.AdamW(early.parameters(), lr=0.1), bucket_bytes=8 * 8 * 4)
    stepped = []
    step.optimizer.register_step_post_hook(lambda *_: stepped.append(1))
    for _ in range(3):
        plain(x).pow(2).mean().backward()
        reference.step(), reference.zero_grad()
        early(x).pow(2).mean().backward()
        assert not step.end_step()
    # backward reaches the last layer's two tensors and the second layer's, then 256 bytes are
    # ready: a bucket; the first layer's two make the second: two optimizer steps a pass
    assert len(stepped) == 3 * 2
    for a, b in zip(plain.parameters(), early.parameters()):
        assert torch.allclose(a, b, atol=1e-6) and b.grad is None


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_mixed_precision_keeps_the_trained_weights_in_float32(lora, tmp_path, offline_path,
                                                                    dreambooth_photos):
    """The optimizer updates float32 weights only ("Attempting to unscale FP16 gradients" is what
    users meet otherwise); the frozen parts run in half precision; afterwards all is float32."""
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", mixed_precision="bf16", lora=lora,
                 train_text_encoder=True, max_train_steps=3, prior_preservation=True, num_class_images=2,
                 sample_batch_size=2, validation_prompts=["a photo of sks dog"], validation_steps=3)
    sd = load_model(offline_path)
    seen = []

    def look(step, logs):
        trained = [p.dtype for m in (sd.unet, sd.text_encoder) for p in m.parameters() if p.requires_grad]
        frozen = [p.dtype for m in (sd.unet, sd.text_encoder, sd.vae) for p in m.parameters()
                  if not p.requires_grad]
        seen.append((set(trained), set(frozen)))

    result = train(s, sd=sd, on_step=look, save=False)
    assert all(trained == {torch.float32} for trained, _ in seen)
    assert all(frozen == {torch.bfloat16} for _, frozen in seen)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert {p.dtype for m in (result.sd.unet, result.sd.vae, result.sd.text_encoder)
            for p in m.parameters()} == {torch.float32}


def with_stand_in_scaler(monkeypatch) -> list:
    """accelerate makes fp16's loss scaler on a GPU only: here the trainer gets torch's GradScaler
    on the CPU. Its scale grows 1.5 times a step from 3: not powers of two, so scaling and unscaling
    round the gradients, and the run depends on the scale. Returns the scalers made."""
    make, scalers = train_module.make_accelerator, []

    def with_scaler(s):
        accelerator = make(s)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=3.0, growth_factor=1.5, growth_interval=1)
        scalers.append(accelerator.scaler)
        return accelerator

    monkeypatch.setattr(train_module, "make_accelerator", with_scaler)
    return scalers


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "step-in-backward"])
def test_an_fp16_run_resumes_exactly_with_its_loss_scale(fused, tmp_path, offline_path, dreambooth_photos,
                                                        monkeypatch):
    scalers = with_stand_in_scaler(monkeypatch)
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=6, checkpointing_steps=3,
                 checkpoints_total_limit=3, step_in_backward=fused)
    whole = train(s, sd=load_model(offline_path), save=False)
    assert scalers[0].get_scale() == 3.0 * 1.5**6  # it grew at every step
    folder = runs.checkpoint_dir(s)
    state = json.loads((folder / "checkpoint-000003" / "state.json").read_text())
    assert state["scaler"]["scale"] == 3.0 * 1.5**3

    (folder / "checkpoint-000006" / "state.json").unlink()  # as if killed after step 3
    resumed = train(Settings(**{**s.to_dict(), "resume_from": "latest"}), sd=load_model(offline_path),
                    save=False)
    assert max_difference(weights(whole.sd.unet), weights(resumed.sd.unet)) == 0

    # without the scale in the checkpoint, the resumed run would be another run
    state = json.loads((folder / "checkpoint-000003" / "state.json").read_text())
    (folder / "checkpoint-000003" / "state.json").write_text(json.dumps({**state, "scaler": None}))
    for later in checkpoints(folder)[1:]:
        (later / "state.json").unlink()
    forgetful = train(Settings(**{**s.to_dict(), "resume_from": "latest"}), sd=load_model(offline_path),
                      save=False)
    assert max_difference(weights(whole.sd.unet), weights(forgetful.sd.unet)) > 0


def test_checkpoints_are_written_in_shards_and_compact_ones_are_a_sixth(
        tmp_path, offline_path, dreambooth_photos, monkeypatch, capsys):
    monkeypatch.setattr(train_module.checkpoints, "SHARD", "300KB")  # the tiny UNet is ~1 MB
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=4, checkpointing_steps=2)
    whole = train(s, sd=load_model(offline_path), save=False)
    full = runs.checkpoint_dir(s) / "checkpoint-000002"
    assert len(list(full.glob("trained-*-of-*.safetensors"))) >= 3  # each shard at most 300 kB
    assert len(list(full.glob("optimizer-*-of-*.safetensors"))) >= 6
    assert all(p.stat().st_size < 400_000 for p in full.iterdir())

    compact = Settings(**{**s.to_dict(), "output_dir": str(tmp_path / "compact"),
                          "compact_checkpoints": True})
    train(compact, sd=load_model(offline_path), save=False)
    small = runs.checkpoint_dir(compact) / "checkpoint-000002"
    assert not list(small.glob("optimizer*"))

    def size(folder):
        return sum(p.stat().st_size for p in folder.iterdir())
    assert size(small) < size(full) / 5  # float16 weights (2 bytes), no Adam: 16 bytes a weight before
    assert not (runs.checkpoint_dir(compact) / "checkpoint-000004").exists()  # the model will hold it
    capsys.readouterr()
    resumed = train(Settings(**{**compact.to_dict(), "resume_from": "latest"}), sd=load_model(offline_path),
                    save=False)
    assert "compact checkpoint: close to, not exactly" in capsys.readouterr().out
    gap = max_difference(weights(whole.sd.unet), weights(resumed.sd.unet))
    assert 0 < gap < 0.05  # close: one lr 1e-3 step moves a weight by up to ~1e-3


def test_train_leaves_only_its_result_alive(tmp_path, offline_path, dreambooth_photos, monkeypatch):
    import gc
    import weakref

    made = []
    real = train_module.make_optimizer
    monkeypatch.setattr(train_module, "make_optimizer",
                        lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=2,
                 step_in_backward=True)
    gc.disable()  # nothing may rely on the garbage collector running by chance
    try:
        result = train(s, save=False)  # train() loads its own model
        unet, optimizer = weakref.ref(result.sd.unet), weakref.ref(made.pop())
        assert optimizer() is None  # the optimizer and its state are gone once train() returns
        del result
        second = train(s, save=False)  # the first run's model is freed before the second one's is made
        assert unet() is None and second.sd.unet is not None
    finally:
        gc.enable()


def test_a_stopped_run_says_so_in_its_folder_and_card(tmp_path, offline_path, dreambooth_photos, capsys):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", max_train_steps=6, checkpointing_steps=2)

    def press_stop(step, logs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(s, sd=load_model(offline_path), on_step=press_stop)
    record = json.loads((result.output_dir / runs.RUN_RECORD).read_text())
    assert result.step == 3 and record["step"] == 3 and record["max_train_steps"] == 6
    assert "Unfinished:** trained for 3 of its 6 steps" in (result.output_dir / "README.md").read_text()

    done = train(Settings(**{**s.to_dict(), "resume_from": "latest"}), sd=load_model(offline_path))
    assert done.step == 6 and "Trained for 6 steps" in (done.output_dir / "README.md").read_text()
    saved = (done.output_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    again = train(Settings(**{**s.to_dict(), "resume_from": "latest"}), sd=load_model(offline_path))
    assert "nothing to train: this run is complete" in capsys.readouterr().out and again.step == 6
    assert (done.output_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == saved


def test_half_precision_saves_half_the_bytes_and_samples_from_what_it_saved(tmp_path, offline_path,
                                                                            dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", save_precision="fp16")
    result = train(s, sd=load_model(offline_path))
    assert result.sd.unet.dtype == torch.float16
    saved = load_file(result.output_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in saved.values())
    assert max_difference(saved, weights(result.sd.unet)) == 0


@pytest.mark.parametrize("field, value, words", [
    ("device", "cuda", "no CUDA GPU"),
    ("device", "tpu", "give None"),
    ("mixed_precision", "fp16", "needs a GPU.*bf16"),
    ("save_precision", "int8", "fp32, fp16"),
])
def test_devices_and_precisions_that_cannot_run_here_are_named(field, value, words, tmp_path, offline_path,
                                                                dreambooth_photos):
    s = settings(tmp_path, offline_path, dreambooth_photos / "dog", **{field: value})
    if field == "mixed_precision":
        s.device = "cpu"
    with pytest.raises(DreamlabError, match=words):
        s.validate()
