import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

import dreamlab
from dreamlab import DreamlabError, load_model
from dreamlab.models import resolve_model_name


def test_offline_model_loads_through_the_same_function_as_real_sd(offline_path):
    sd = load_model(offline_path)
    assert isinstance(sd.tokenizer, CLIPTokenizer)
    assert sd.tokenizer("a photo of sks dog").input_ids[4] == 48136
    assert sd.vae.config.latent_channels == 4 and sd.vae.config.scaling_factor == 0.18215
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size
    assert sd.noise_scheduler.config.num_train_timesteps == 1000
    assert sd.noise_scheduler.config.beta_schedule == "scaled_linear"
    # the VAE shrinks 64 px images to 8x8 latents, as SD shrinks 512 px to 64x64
    latents = sd.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)


def test_offline_model_is_a_diffusers_folder_with_safetensors(offline_path):
    pipe = StableDiffusionPipeline.from_pretrained(offline_path)
    image = pipe("a photo of sks dog", height=64, width=64, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    from pathlib import Path
    files = [p.name for p in Path(offline_path).rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".bin", ".ckpt", ".pt", ".pkl"))]
    assert json.loads((Path(offline_path) / "model_index.json").read_text())["unet"][1] == \
        "UNet2DConditionModel"


def test_pipeline_shares_the_loaded_modules(sd):
    pipe = sd.pipeline()
    assert pipe.unet is sd.unet and pipe.vae is sd.vae and pipe.text_encoder is sd.text_encoder


def test_old_runwayml_id_maps_to_the_new_one():
    with pytest.warns(UserWarning, match="no longer exists"):
        assert resolve_model_name("runwayml/stable-diffusion-v1-5") == dreamlab.SD15


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(DreamlabError, match=str(tmp_path)) as e:
        load_model(str(tmp_path))
    assert "model_index.json" in str(e.value) and "offline_model" in str(e.value)


def test_a_broken_model_folder_gives_a_short_message(offline_path, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(offline_path, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(DreamlabError, match="could not load the model"):
        load_model(str(broken))


def test_missing_folder_and_bad_id_are_named():
    with pytest.raises(DreamlabError, match="no such folder"):
        load_model("./no/such/model")


def test_unreachable_hub_fails_fast_and_names_the_offline_choice(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DreamlabError, match="offline_model"):
        load_model("someone/some-model-that-is-not-cached")


def test_the_toy_model_opens_exactly_as_sd_does(toy_path):
    sd = load_model(toy_path)
    assert sd.tokenizer("a photo of sks ball").input_ids == [49406, 320, 1125, 539, 48136, 1069, 49407]
    assert sd.noise_scheduler.config.beta_schedule == "scaled_linear"
    assert sd.vae.config.scaling_factor == 0.18215
    assert all(p.dtype == torch.float32 for p in sd.unet.parameters())  # stored in float16
    from pathlib import Path
    assert not [p for p in Path(toy_path).rglob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pkl")]
    image = dreamlab.generate(sd.pipeline(), ["a photo of a red ball on grass"], [0], resolution=64,
                              num_inference_steps=5)[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize("folder", ["toy", "random"])
def test_the_shipped_models_load_the_standard_way_on_a_cpu(folder, toy_path, offline_path):
    """What a curious learner tries first: diffusers' own loader, no arguments, then a picture."""
    pipe = StableDiffusionPipeline.from_pretrained(toy_path if folder == "toy" else offline_path)
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    image = pipe("a photo of a ball", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
