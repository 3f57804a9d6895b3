import math

import pytest
import torch

from dreamlab import (
    DreamBoothDataset,
    DreamlabError,
    Settings,
    collate,
    generate,
    load_model,
    train,
    training_step,
)


def batch_of(sd, folder, class_dir=None, n=2):
    ds = DreamBoothDataset(folder, "a photo of sks dog", sd.tokenizer, 64, class_dir=class_dir,
                           class_prompt="a photo of a dog", center_crop=True)
    return collate([ds[i] for i in range(n)])


def settings(tmp_path, offline_path, **overrides):
    values = dict(model=offline_path, resolution=64, max_train_steps=5, learning_rate=1e-3,
                  device="cpu", prior_preservation=False, num_inference_steps=2,
                  class_dir=str(tmp_path / "class"), output_dir=str(tmp_path / "out"),
                  instance_dir=str(tmp_path.parent / "unused"))
    values.update(overrides)
    return Settings(**values)


def test_a_step_changes_the_unet_with_a_finite_loss(sd, dreambooth_photos):
    batch = batch_of(sd, dreambooth_photos / "dog")
    before = {k: v.clone() for k, v in sd.unet.state_dict().items()}
    optimizer = torch.optim.AdamW(sd.unet.parameters(), lr=1e-3)
    loss, logs = training_step(sd, batch, generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and math.isfinite(loss.item()) and loss.item() > 0
    assert set(logs) == {"loss", "instance_loss"}
    loss.backward()
    optimizer.step()
    changed = [k for k, v in sd.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    assert all(p.grad is None for p in sd.vae.parameters())  # the VAE stays frozen


def test_the_step_is_reproducible_with_a_generator(sd, dreambooth_photos):
    batch = batch_of(sd, dreambooth_photos / "dog")
    a = training_step(sd, batch, generator=torch.Generator().manual_seed(3))[0]
    b = training_step(sd, batch, generator=torch.Generator().manual_seed(3))[0]
    c = training_step(sd, batch, generator=torch.Generator().manual_seed(4))[0]
    assert a.item() == b.item() != c.item()


def test_prior_loss_is_split_and_weighted(sd, dreambooth_photos, class_dir):
    batch = batch_of(sd, dreambooth_photos / "dog", class_dir)
    assert batch["pixel_values"].shape[0] == 4 and batch["num_instance"] == 2
    _, logs1 = training_step(sd, batch, 1.0, torch.Generator().manual_seed(0))
    _, logs3 = training_step(sd, batch, 3.0, torch.Generator().manual_seed(0))
    assert logs1["prior_loss"] == pytest.approx(logs3["prior_loss"])
    assert logs3["loss"] == pytest.approx(logs3["instance_loss"] + 3.0 * logs3["prior_loss"], rel=1e-5)
    assert logs1["loss"] < logs3["loss"]


def test_v_prediction_uses_the_velocity_target(sd, dreambooth_photos):
    from diffusers import DDPMScheduler
    batch = batch_of(sd, dreambooth_photos / "dog")
    eps = training_step(sd, batch, generator=torch.Generator().manual_seed(0))[0]
    sd.noise_scheduler = DDPMScheduler.from_config(sd.noise_scheduler.config,
                                                   prediction_type="v_prediction")
    v = training_step(sd, batch, generator=torch.Generator().manual_seed(0))[0]
    assert math.isfinite(v.item()) and v.item() != pytest.approx(eps.item())


def instance_loss(sd, batch, seeds=range(8)) -> float:
    """The loss on the instance images, averaged over fixed noise and timesteps."""
    with torch.no_grad():
        return sum(training_step(sd, batch, generator=torch.Generator().manual_seed(s))[1]["loss"]
                   for s in seeds) / len(seeds)


def test_a_short_run_lowers_the_loss_on_the_instance_images(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, instance_dir=str(dreambooth_photos / "dog"),
                 max_train_steps=40, train_batch_size=2, center_crop=True)
    sd = load_model(offline_path)
    batch = batch_of(sd, dreambooth_photos / "dog", n=5)
    before = instance_loss(sd, batch)
    seen = []
    result = train(s, sd=sd, on_step=lambda step, logs: seen.append(step), save=False)
    after = instance_loss(result.sd, batch)
    assert after < 0.7 * before, (before, after)
    assert seen == list(range(1, 41)) and len(result.history) == 40
    assert result.history[-1]["lr"] == pytest.approx(1e-3)


def test_prior_preservation_run_saves_a_pipeline_that_loads_back_and_generates(
        tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, instance_dir=str(dreambooth_photos / "cat2"),
                 prior_preservation=True, class_prompt="a photo of a cat", num_class_images=3,
                 sample_batch_size=2)
    result = train(s)
    assert len(list((tmp_path / "class").glob("*.png"))) == 3
    assert all("prior_loss" in h for h in result.history)
    out = tmp_path / "out"
    assert result.output_dir == out and (out / "model_index.json").exists()
    assert list(out.rglob("*.safetensors")) and not list(out.rglob("*.bin"))
    assert not (tmp_path / "out.saving").exists()
    loaded = load_model(str(out))
    for name in ("unet", "text_encoder"):
        a, b = getattr(loaded, name).state_dict(), getattr(result.sd, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    base = load_model(offline_path)
    assert not torch.equal(loaded.unet.conv_in.weight, base.unet.conv_in.weight)
    images = generate(loaded.pipeline(), ["a photo of sks cat"] * 2, [0, 1], resolution=64,
                      num_inference_steps=2)
    assert [im.size for im in images] == [(64, 64)] * 2
    assert images[0].tobytes() != images[1].tobytes()


def test_text_encoder_training_and_lr_schedule(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, instance_dir=str(dreambooth_photos / "dog"),
                 train_text_encoder=True, lr_scheduler="linear", max_train_steps=4)
    sd = load_model(offline_path)
    before = {k: v.clone() for k, v in sd.text_encoder.state_dict().items()}
    result = train(s, sd=sd, save=False)
    after = result.sd.text_encoder.state_dict()
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2
    assert [round(h["lr"], 6) for h in result.history] == [0.00075, 0.0005, 0.00025, 0.0]


def test_train_identifier_moves_only_the_identifiers_word(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, instance_dir=str(dreambooth_photos / "dog"),
                 train_identifier=True, identifier_lr=1e-2, max_train_steps=3)
    sd = load_model(offline_path)
    sks = sd.tokenizer("sks", add_special_tokens=False).input_ids
    before = {k: v.clone() for k, v in sd.text_encoder.state_dict().items()}
    result = train(s, sd=sd)
    after = result.sd.text_encoder.state_dict()
    table = next(k for k in before if k.endswith("token_embedding.weight"))
    moved = (before[table] != after[table]).any(dim=1).nonzero().flatten().tolist()
    assert moved == sks  # "sks" alone: not "a", "photo", "dog", and no other word decayed
    assert all(torch.equal(before[k], after[k]) for k in before if k != table)
    loaded = load_model(str(tmp_path / "out"))  # the saved model has the learned word
    assert torch.equal(loaded.text_encoder.state_dict()[table], after[table])


def test_the_identifier_is_what_the_instance_prompt_adds():
    from dreamlab.identifier import identifier_words

    assert identifier_words("A photo of sks dog.", "a photo of a dog") == ["sks"]  # case, punctuation
    assert identifier_words("a photo of zwx cat on a sofa", "a photo of a cat") == ["zwx", "on", "sofa"]


@pytest.mark.parametrize("overrides, words", [
    (dict(train_text_encoder=True), "choose one"),
    (dict(instance_prompt="a photo of a dog"), "has no word that class prompt"),
    (dict(identifier_lr=1.0), "at most 0.1"),
])
def test_bad_identifier_settings_are_named(overrides, words, dreambooth_photos):
    s = Settings(instance_dir=str(dreambooth_photos / "dog"), train_identifier=True, **overrides)
    with pytest.raises(DreamlabError, match=words):
        s.validate()


def test_same_seed_same_result(tmp_path, offline_path, dreambooth_photos):
    s = settings(tmp_path, offline_path, instance_dir=str(dreambooth_photos / "dog"))
    a = train(s, sd=load_model(offline_path), save=False).history
    b = train(s, sd=load_model(offline_path), save=False).history
    assert [h["loss"] for h in a] == [h["loss"] for h in b]


@pytest.mark.parametrize("field, value, words", [
    ("resolution", 100, "multiple of 8"),
    ("learning_rate", 0.5, "far too high"),
    ("lr_scheduler", "sometimes", "choose one of"),
    ("mixed_precision", "fp8", "choose one of"),
    ("train_batch_size", 0, "at least 1"),
    ("instance_dir", "/no/such/folder", "not a folder"),
    ("class_prompt", " ", "prior preservation needs"),
])
def test_bad_settings_are_named(field, value, words, dreambooth_photos):
    s = Settings(**{"instance_dir": str(dreambooth_photos / "dog"), field: value})
    with pytest.raises(DreamlabError, match=f"{field}=.*{words}"):
        s.validate()
