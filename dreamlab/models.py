"""Load Stable Diffusion's five parts, from the hub or from a local folder in diffusers layout.

The same function loads real SD 1.5 on Colab and the small offline model on a CPU, so the
lessons run the same code in both places; only the `model` argument differs.
"""

import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .errors import DreamlabError
from .settings import SD15

# Ids that used to work and now point elsewhere on the hub.
RENAMED = {"runwayml/stable-diffusion-v1-5": SD15}

HUB_HINT = (
    "No internet or no hub access? Use the offline model instead: "
    "model=dreamlab.offline_model() (a small SD of the same architecture, trained on a toy world)."
)


@dataclass
class StableDiffusion:
    """The five parts a learner works with, by name."""

    tokenizer: CLIPTokenizer  # text -> 77 token ids
    text_encoder: CLIPTextModel  # token ids -> 77 embedding vectors
    vae: AutoencoderKL  # image <-> latents 8 times smaller
    unet: UNet2DConditionModel  # predicts the noise in noisy latents, given the text
    noise_scheduler: DDPMScheduler  # how much noise at which timestep (for training)
    name: str = ""

    def pipeline(self, scheduler=None) -> StableDiffusionPipeline:
        """A text-to-image pipeline that shares these very modules (no copy)."""
        from diffusers import DPMSolverMultistepScheduler

        if scheduler is None:  # a fast sampler: good images in 20-25 steps
            scheduler = DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config)
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            unet=self.unet, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def device(self) -> torch.device:
        return self.unet.device


def resolve_model_name(model: str) -> str:
    if model in RENAMED:
        warnings.warn(f"{model!r} no longer exists on the hub; loading {RENAMED[model]!r}, "
                      "the same weights under their new name.", stacklevel=3)
        return RENAMED[model]
    return model


def check_model_name(model) -> str:
    """A local folder in diffusers layout, or something that can be a hub id ('owner/name'): the
    name to load (old ids renamed, folders expanded), or a DreamlabError saying what is wrong. It
    reads nothing but the folder's listing, so it is checked before anything slow."""
    model = resolve_model_name(str(model))
    local = Path(model).expanduser()
    if local.exists():
        check_model_folder(local)
        return str(local)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise DreamlabError(f"model {model!r}: no such folder, and not a hub id of the form "
                            f"'owner/name' (e.g. {SD15!r}).")
    return model


def check_model_folder(folder: Path) -> None:
    missing = [p for p in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if not (folder / p).exists()]
    if missing:
        raise DreamlabError(
            f"{folder} is not a Stable Diffusion model folder in diffusers layout "
            f"(missing: {', '.join(missing)}). Give a hub id such as {SD15!r}, a folder saved by "
            "pipeline.save_pretrained(), or dreamlab.offline_model().")


# What training and sampling need from a hub repo: SD 1.5's repo also holds 20 GB of
# other files (.ckpt checkpoints, EMA and fp16 copies, the safety checker).
NEEDED_FILES = ["model_index.json", "scheduler/*", "tokenizer/*", "*/config.json",
                "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "unet/diffusion_pytorch_model.safetensors"]


def hub_reachable(timeout: float = 10.0) -> bool:
    """One quick request, so that an offline machine fails in seconds, not after minutes of retries."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"),
                               timeout=timeout)
    except urllib.error.HTTPError:
        return True  # the server answered
    except (OSError, ValueError):
        return False
    return True


def download(model_id: str, revision: str | None = None) -> str:
    """Download (or find in the cache) the files of a hub model; return their local folder."""
    from huggingface_hub import constants, snapshot_download

    try:  # already in the cache: no network needed
        return snapshot_download(model_id, revision=revision, allow_patterns=NEEDED_FILES,
                                 local_files_only=True)
    except Exception:
        pass
    if constants.HF_HUB_OFFLINE or not hub_reachable():
        raise DreamlabError(f"cannot download {model_id!r}: the Hugging Face hub cannot be "
                            f"reached from here. {HUB_HINT}")
    try:
        return snapshot_download(model_id, revision=revision, allow_patterns=NEEDED_FILES)
    except Exception as e:  # unknown repo, gated repo, bad revision, ...
        raise DreamlabError(f"could not download {model_id!r} (revision {revision or 'main'}) "
                            f"from the hub: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None


def load_model(model: str = SD15, revision: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> StableDiffusion:
    """Load tokenizer, text encoder, VAE, UNet and noise scheduler.

    `model` is a hub id (downloaded once, then cached) or a local folder. `dtype` is the
    weights' precision: float16 halves memory on a GPU for inference; training keeps the
    weights it updates in float32 (see train.py).
    """
    model = check_model_name(model)
    if not Path(model).exists():
        model = download(model, revision)
    try:
        parts = StableDiffusion(
            tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
            text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder",
                                                       torch_dtype=dtype),
            vae=AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype),
            unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype),
            noise_scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler"),
            name=model,
        )
    except (OSError, ValueError) as e:  # what the loaders raise for missing or broken files
        raise DreamlabError(f"could not load the model in {model}: {e}") from None
    for module in (parts.text_encoder, parts.vae, parts.unet):
        module.to(device)
    return parts
