"""Small Stable Diffusions that need no download: same classes and layout, far fewer weights.

- offline_model(): the toy SD shipped in dreamlab/assets/toy-sd, pretrained on the toy world
  (dreamlab/toyworld.py, scripts/pretrain_toy.py). The lessons' offline default: it draws
  balls, boxes, stars and rings from captions, and DreamBooth visibly works on it.
- random_model(): built here in seconds with random weights (SD v1's tokenizer and noise
  schedule, a VAE that shrinks images 8 times into 4 channels, a cross-attention UNet). It
  draws noise, but runs every line of code fast: the tests use it.
"""

import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .settings import ASSETS

TOKENIZER = ASSETS / "sd-v1-tokenizer"
TOY_MODEL = ASSETS / "toy-sd"  # shipped
# Built on first use, in the user's cache (never inside the installed package); the number
# changes when the recipe below does, so that an older build is not picked up.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dreamlab"
RANDOM_MODEL = CACHE / "random-sd-1"

# SD v1's noise schedule, exactly as in its scheduler/scheduler_config.json
SD_V1_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
                      skip_prk_steps=True, prediction_type="epsilon")


def build_random_model(out: Path = RANDOM_MODEL, seed: int = 0, size: str = "tiny") -> Path:
    """Write a random-weight SD in diffusers layout (safetensors) to `out`.

    size "tiny": the tests' model (seconds to build, milliseconds a step). size "small": SD's
    topology at a fraction of its width (UNet channels 64/128/256/256, two layers per block,
    cross-attention in the first three blocks, as SD's), for benchmarks. size "micro": SD 1.5's
    sizes (512 px pictures, 64x64 latents) at the fewest weights, so that the lessons' Colab
    settings run on a CPU (tests/colab_rehearsal.py): 2 to 8 channels, cross-attention only in
    the UNet's middle block (at 8x8), none in the VAE. On one CPU thread a 512 px picture (25
    steps, guidance, in batches of 4) costs about 0.25 s, a training step on a photo and a class
    image about 0.12 s."""
    if size not in ("tiny", "small", "micro"):
        raise ValueError(f"size {size!r}: choose tiny, small or micro")
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    text_encoder, vae, unet = random_parts(size, len(tokenizer))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(**SD_V1_SCHEDULE), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    # Write next to the target, then rename: an interrupted build never leaves half a model.
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")  # (two processes may build at once)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # Ship the tokenizer files exactly as SD's hub folder has them (vocab.json + merges.txt),
    # which every transformers version reads.
    shutil.rmtree(tmp / "tokenizer")
    shutil.copytree(TOKENIZER, tmp / "tokenizer")
    if out.exists():
        shutil.rmtree(out)
    try:
        tmp.rename(out)
    except OSError:  # another process got there first: its model is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def random_parts(size: str, vocab_size: int):
    """build_random_model's text encoder, VAE and UNet, with random weights."""
    small, micro = size == "small", size == "micro"
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, max_position_embeddings=77, hidden_size=128 if small else 32,
        intermediate_size=512 if small else 64, num_hidden_layers=4 if small else 2,
        num_attention_heads=4, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        hidden_act="quick_gelu"))  # SD v1's text encoder is CLIP ViT-L/14's: quick_gelu
    # Four blocks, three downsamplings: 8x smaller, in 4 channels, as in SD
    vae_layout = dict(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.18215,
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    if micro:  # at 512 px the cost is in passes over full-size images: 4 channels, no attention
        vae = AutoencoderKL(**vae_layout, block_out_channels=(2, 2, 4, 4), norm_num_groups=2,
                            layers_per_block=1, mid_block_add_attention=False, sample_size=512)
    else:
        vae = AutoencoderKL(**vae_layout, norm_num_groups=32 if small else 8,  # small: 3.9M weights
                            block_out_channels=(32, 64, 128, 128) if small else (8, 16, 32, 32),
                            layers_per_block=1, sample_size=64)
    if small:
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(64, 128, 256, 256), norm_num_groups=32, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=text_encoder.config.hidden_size)
    elif micro:  # self-attention over 64x64 latents (4096 positions) would cost seconds a picture
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(4, 4, 8, 8), norm_num_groups=4, attention_head_dim=8,
            down_block_types=("DownBlock2D",) * 4, up_block_types=("UpBlock2D",) * 4,
            mid_block_type="UNetMidBlock2DCrossAttn",  # the text enters here, at 8x8
            cross_attention_dim=text_encoder.config.hidden_size)
    else:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=8, attention_head_dim=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_encoder.config.hidden_size)
    return text_encoder, vae, unet


def random_model() -> str:
    """The random-weight model's folder, built the first time (a few seconds)."""
    if not (RANDOM_MODEL / "model_index.json").exists():
        build_random_model()
    return str(RANDOM_MODEL)


def offline_model() -> str:
    """The toy model's folder: what the lessons use without a GPU."""
    if not (TOY_MODEL / "model_index.json").exists():
        from .errors import DreamlabError
        raise DreamlabError(f"the toy model is missing from {TOY_MODEL}: restore it with git, "
                            "or rebuild it with python scripts/pretrain_toy.py")
    return str(TOY_MODEL)
