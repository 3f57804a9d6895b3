import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from dreamlab import DreamlabError, Settings, load_model
from dreamlab.export import (
    push_to_hub,
    save_diffusers,
    save_kohya_lora,
    save_lora,
    save_single_file,
    write_model_card,
)
from dreamlab.lora import add_lora


def image(pipe) -> np.ndarray:
    """One small image as an array, from a fixed seed: equal weights give an equal array."""
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks dog", height=64, width=64, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def from_single_file(path, config_folder, **kwargs):
    """Offline: the configs, tokenizer and scheduler come from a diffusers folder."""
    return StableDiffusionPipeline.from_single_file(str(path), config=str(config_folder),
                                                    local_files_only=True, **kwargs)


@pytest.fixture
def lora_sd(sd):
    """The random model with LoRA adapters as the trainer adds them, alpha != rank so that a
    wrong scale shows. peft starts lora_B at zero (no effect), so it is filled at random."""
    torch.manual_seed(0)  # lora_A's initial values come from the global generator
    add_lora(sd.unet, "unet", rank=4, alpha=8)  # as train() adds them
    add_lora(sd.text_encoder, "text_encoder", rank=2, alpha=6)
    with torch.no_grad():
        for module in (sd.unet, sd.text_encoder):
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)  # a clear change (larger ones blow up the random model)
    return sd


def test_save_diffusers_swaps_the_folder_in_whole(sd, tmp_path, monkeypatch):
    out = save_diffusers(sd, tmp_path / "model")
    assert load_model(out).unet.config.block_out_channels == sd.unet.config.block_out_channels

    class Crash:  # a save that dies halfway, after writing some files
        def save_pretrained(self, folder, **_):
            (folder / "unet").mkdir(parents=True)
            raise KeyboardInterrupt

    monkeypatch.setattr(sd, "pipeline", Crash)
    with pytest.raises(KeyboardInterrupt):
        save_diffusers(sd, out)
    load_model(out)  # the previous model is still there, complete
    monkeypatch.undo()
    save_diffusers(sd, out)  # and the next save cleans up after the crashed one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_single_file_has_the_sd_layout_and_loads_back_exactly(sd, tmp_path):
    folder = save_diffusers(sd, tmp_path / "model")
    path = save_single_file(sd, tmp_path / "model.safetensors", half=False)
    weights = load_file(path)
    for key in ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",  # down_blocks.0.resnets.0.conv1
                "model.diffusion_model.input_blocks.2.0.op.weight",  # the first downsampler
                "model.diffusion_model.output_blocks.1.1.conv.weight",  # an upsampler after no attention
                "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.time_embed.0.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.encoder.down.0.block.0.norm1.weight",
                "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",  # up_blocks.3 in diffusers
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in weights, key
    assert weights["first_stage_model.decoder.mid.attn_1.q.weight"].shape[2:] == (1, 1)  # a 1x1 conv
    assert not [k for k in weights if any(w in k for w in ("down_blocks", "up_blocks", "resnets", "mid_bl"))]
    assert not [k for k in weights if k.startswith("first_stage_model") and ".to_" in k]  # to_q -> q ...
    assert len(weights) == sum(len(m.state_dict()) for m in (sd.unet, sd.vae, sd.text_encoder))

    loaded = from_single_file(path, folder)
    for part in ("unet", "vae", "text_encoder"):
        original, back = getattr(sd, part).state_dict(), getattr(loaded, part).state_dict()
        assert original.keys() == back.keys()
        assert all(torch.equal(original[k], back[k]) for k in original), part
    assert np.abs(image(loaded) - image(StableDiffusionPipeline.from_pretrained(folder))).max() < 1e-6


def test_an_sd15_shaped_unet_gets_sd15_names():
    """SD 1.5's block layout (4 blocks of 2 layers, no attention at the bottom), tiny widths."""
    from diffusers import UNet2DConditionModel

    from dreamlab.export import unet_to_original

    unet = UNet2DConditionModel(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, attention_head_dim=2,
                                cross_attention_dim=8, layers_per_block=2)
    converted = unet_to_original(unet.state_dict(), unet.config)
    names = {k.removeprefix("model.diffusion_model.") for k in converted}
    # names as in SD 1.5's own checkpoint (v1-5-pruned)
    assert {"input_blocks.3.0.op.weight", "input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight",
            "input_blocks.11.0.out_layers.3.weight", "middle_block.2.emb_layers.1.bias",
            "output_blocks.2.1.conv.weight", "output_blocks.5.2.conv.weight", "output_blocks.8.2.conv.weight",
            "output_blocks.11.1.proj_out.weight", "output_blocks.11.0.skip_connection.weight"} <= names
    assert not [n for n in names if n.startswith(("input_blocks.12", "output_blocks.12"))]


def test_single_file_of_the_toy_model_in_half_precision(toy_path, tmp_path):
    """The toy model's UNet has 3 blocks, attention in the lower ones, a VAE with 3 blocks."""
    toy = load_model(toy_path)
    path = save_single_file(toy, tmp_path / "toy.safetensors")  # half=True
    weights = load_file(path)
    assert {v.dtype for v in weights.values()} == {torch.float16}
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in weights  # upsampler after attention
    assert "model.diffusion_model.input_blocks.4.0.op.weight" in weights
    assert "first_stage_model.decoder.up.2.upsample.conv.weight" in weights

    loaded = from_single_file(path, toy_path, torch_dtype=torch.float32)  # run in float32 on the CPU
    for module in (toy.unet, toy.vae, toy.text_encoder):  # what float16 keeps of the weights
        for p in module.parameters():
            p.data = p.data.half().float()
    assert all(torch.equal(v, loaded.unet.state_dict()[k]) for k, v in toy.unet.state_dict().items())
    assert np.abs(image(loaded) - image(toy.pipeline(loaded.scheduler))).max() < 1e-5


def test_single_file_merges_lora_adapters(lora_sd, tmp_path, offline_path):
    path = save_single_file(lora_sd, tmp_path / "merged.safetensors", half=False)
    assert not [k for k in load_file(path) if "lora" in k or "base_layer" in k]
    loaded = from_single_file(path, offline_path)
    with_lora = image(lora_sd.pipeline(loaded.scheduler))
    assert np.abs(image(loaded) - with_lora).max() < 1e-4  # W + B @ A rounds a little differently
    base = image(StableDiffusionPipeline.from_pretrained(offline_path))
    assert np.abs(base - with_lora).max() > 0.05  # the adapters' effect is far above that


def test_lora_saves_in_diffusers_and_kohya_formats_that_load_back(lora_sd, offline_path, tmp_path):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    trained = image(lora_sd.pipeline())
    assert np.abs(trained - image(load_model(offline_path).pipeline())).max() > 0.05  # LoRA matters

    path = save_lora(lora_sd, tmp_path / "lora")
    assert path.name == "pytorch_lora_weights.safetensors"
    assert {k.split(".")[0] for k in load_file(path)} == {"unet", "text_encoder"}

    kohya = load_file(save_kohya_lora(lora_sd, tmp_path / "kohya.safetensors"))
    assert {k.split("_")[1] for k in kohya} == {"unet", "te"}  # lora_unet_..., lora_te_...
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in kohya
    alphas = {k: v.item() for k, v in kohya.items() if k.endswith(".alpha")}
    assert len(alphas) * 3 == len(kohya)  # down, up and alpha for every layer
    assert set(alphas.values()) == {8.0, 6.0}  # the real alphas, not the ranks
    unet_peft = {"unet." + k: v for k, v in get_peft_model_state_dict(lora_sd.unet).items()}
    assert {k for k in kohya if k.startswith("lora_unet_")} == set(convert_state_dict_to_kohya(unet_peft))

    for saved in (path.parent, tmp_path / "kohya.safetensors"):
        pipe = load_model(offline_path).pipeline()
        pipe.load_lora_weights(str(saved))
        assert np.abs(image(pipe) - trained).max() < 1e-5, saved.name


def test_lora_and_single_file_refuse_what_they_cannot_save(sd, tmp_path):
    with pytest.raises(DreamlabError, match="no LoRA adapters"):
        save_lora(sd, tmp_path / "lora")
    with pytest.raises(DreamlabError, match="no LoRA adapters"):
        save_kohya_lora(sd, tmp_path / "lora.safetensors")
    with pytest.raises(DreamlabError, match=r"\.safetensors"):
        save_single_file(sd, tmp_path / "model.ckpt")
    assert not list(tmp_path.rglob("*.safetensors*"))


def test_save_diffusers_refuses_lora_adapters(lora_sd, tmp_path):
    with pytest.raises(DreamlabError, match="save_lora"):
        save_diffusers(lora_sd, tmp_path / "model")
    assert not list(tmp_path.iterdir())


def test_model_card_metadata_and_samples_read_back(tmp_path):
    settings = Settings(instance_prompt="a photo of sks dog", max_train_steps=123, more_subjects=[
        {"instance_dir": "/home/me/cat", "instance_prompt": "a photo of zwx cat | indoors"}])
    settings.lora = True  # whether or not Settings has the field yet
    images = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    path = write_model_card(tmp_path / "lora", settings, images, repo_id="me/sks-dog")
    card = ModelCard.load(path)
    assert card.data.license == "creativeml-openrail-m"
    assert card.data.base_model == settings.model
    assert {"text-to-image", "diffusers", "dreambooth", "stable-diffusion", "lora"} <= set(card.data.tags)
    assert card.data.instance_prompt == "a photo of sks dog"
    assert [w["output"]["url"] for w in card.data.widget] == ["samples/0.png", "samples/1.png"]
    assert Image.open(tmp_path / "lora" / "samples" / "1.png").getpixel((0, 0)) == (0, 0, 255)
    assert "![a photo of sks dog](samples/0.png)" in card.text
    assert 'pipe.load_lora_weights("me/sks-dog")' in card.text and "| max_train_steps | `123` |" in card.text
    assert "instance_dir" not in card.text and "/home/me" not in card.text  # local paths stay private
    assert "zwx cat \\| indoors" in card.text  # escaped, so the table keeps its two columns

    settings.lora = False
    full = ModelCard.load(write_model_card(tmp_path / "full", settings, base_model=str(tmp_path)))
    assert full.data.base_model is None  # a local folder is no hub id
    assert "lora" not in full.data.tags and "load_lora_weights" not in full.text


def test_push_to_hub_wants_a_card_first(tmp_path):
    with pytest.raises(DreamlabError, match="README.md"):
        push_to_hub(tmp_path, "me/model")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_nothing_written_for_sharing_names_a_local_folder_or_keeps_exif(lora, tmp_path, offline_path,
                                                                         dreambooth_photos):
    """A run on a local base model and the learner's photos: the model folder, its card, configs,
    samples and exports never hold the machine's paths (`dreamlab push` would publish them), and
    no picture written carries EXIF (a phone photo's GPS position)."""
    from dreamlab import train
    from dreamlab.cli import main

    photos = tmp_path / "my photos"
    photos.mkdir()
    for source in sorted((dreambooth_photos / "dog").iterdir())[:2]:  # with their camera's EXIF
        (photos / source.name).write_bytes(source.read_bytes())
    s = Settings(model=offline_path, instance_dir=str(photos), output_dir=str(tmp_path / "out"),
                 class_dir=str(tmp_path / "class"), num_class_images=2, resolution=64, max_train_steps=2,
                 device="cpu", num_inference_steps=2, validation_prompts=["a photo of sks dog"],
                 validation_steps=1, num_validation_images=1, lora=lora, learning_rate=1e-4)
    result = train(s)
    flag = ["--kohya-lora", str(tmp_path / "out" / "kohya.safetensors"), "--base", offline_path] if lora \
        else ["--single-file", str(tmp_path / "out" / "single.safetensors")]
    assert main(["export", "--model", str(result.output_dir.parent if lora else result.output_dir),
                 *flag]) == 0
    private = [str(tmp_path), offline_path, str(photos), str(dreambooth_photos)]
    written = [*(tmp_path / "out").rglob("*"), *(tmp_path / "out-samples").rglob("*")]
    assert len(written) >= 8  # weights, configs or adapters, card, samples, exports
    for path in written:
        if path.is_file() and path.name != "training.json":  # (stays local: push_to_hub leaves it)
            text = path.read_bytes()
            assert not [p for p in private if p.encode() in text], f"{path} names a local folder"
        if path.suffix == ".png":
            assert not Image.open(path).getexif(), f"{path} carries EXIF"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "a local model" in card


def test_a_full_disk_while_saving_leaves_the_old_model_and_no_half_written_folder(sd, tmp_path, monkeypatch):
    import safetensors.torch

    out = save_diffusers(sd, tmp_path / "model")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    real = safetensors.torch.save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if "unet" in str(filename):  # the disk fills up half way through the save
            raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(DreamlabError, match="could not write the model.*No space left.*Nothing half-written"):
        save_diffusers(sd, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no model.saving left behind
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # the old model is whole
    monkeypatch.setattr("dreamlab.files.save_file", lambda *a, **k: full_disk({}, "unet"))
    with pytest.raises(DreamlabError, match="could not write .*single.safetensors.*disk full"):
        save_single_file(sd, tmp_path / "single.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
