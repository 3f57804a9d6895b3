"""DreamBooth fine-tuning: `training_step()` computes one loss; `train()` is the loop around it.

Lesson 3 runs training_step by hand, then calls train(); the command line calls train() too.
"""

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from .data import DreamBoothDataset, collate, generate_class_images
from .errors import DreamlabError
from .models import StableDiffusion, load_model
from .settings import Settings


def training_step(sd: StableDiffusion, batch: dict, prior_loss_weight: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """One DreamBooth loss: noise the images' latents, ask the UNet to predict that noise.

    `batch` is what data.collate makes: pixel_values (B, 3, H, W) in [-1, 1], input_ids
    (B, 77), and num_instance: how many of the B rows are instance images (the rest are
    class images, used for the prior-preservation loss). Returns the loss to backpropagate
    and a dict of plain floats for the history.
    """
    unet = sd.unet  # may be wrapped by accelerate (several GPUs): ask its weights, not it
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    pixels = batch["pixel_values"].to(device, sd.vae.dtype)
    with torch.no_grad():  # the VAE and (unless trained) the text encoder stay frozen
        # (B, 3, H, W) -> (B, 4, H/8, W/8); scaling_factor brings the latents to unit variance
        latents = sd.vae.encode(pixels).latent_dist.sample(generator) * sd.vae.config.scaling_factor
    latents = latents.to(dtype)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.randint(0, sd.noise_scheduler.config.num_train_timesteps,
                              (latents.shape[0],), generator=generator, device=device)
    noisy_latents = sd.noise_scheduler.add_noise(latents, noise, timesteps)
    with torch.set_grad_enabled(sd.text_encoder.training and torch.is_grad_enabled()):
        text = sd.text_encoder(batch["input_ids"].to(device))[0]  # (B, 77, hidden)
    prediction = unet(noisy_latents, timesteps, text.to(dtype)).sample

    # What the UNet should predict: the noise itself (SD 1.x) or the "velocity" (SD 2.x at 768 px)
    if sd.noise_scheduler.config.prediction_type == "v_prediction":
        target = sd.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    n = batch.get("num_instance", len(latents))
    loss = F.mse_loss(prediction[:n].float(), target[:n].float())
    logs = {"instance_loss": loss.item()}
    if n < len(latents):  # prior preservation: the class images' loss keeps the class intact
        prior_loss = F.mse_loss(prediction[n:].float(), target[n:].float())
        loss = loss + prior_loss_weight * prior_loss
        logs["prior_loss"] = prior_loss.item()
    logs["loss"] = loss.item()
    return loss, logs


@dataclass
class TrainResult:
    sd: StableDiffusion  # the fine-tuned model, ready for sampling
    history: list[dict] = field(default_factory=list)  # one dict of losses per step
    output_dir: Path | None = None


def prepare_class_images(s: Settings, sd: StableDiffusion, accelerator: Accelerator) -> None:
    """Generate the missing class images (on the main process only, in several-GPU runs)."""
    if accelerator.is_main_process:
        generate_class_images(sd.pipeline(), s.class_dir, s.class_prompt, s.num_class_images,
                              batch_size=s.sample_batch_size, resolution=s.resolution,
                              num_inference_steps=s.num_inference_steps,
                              guidance_scale=s.guidance_scale, seed=s.seed)
    accelerator.wait_for_everyone()


def save_model(sd: StableDiffusion, output_dir) -> Path:
    """Save the whole pipeline in diffusers layout (safetensors), atomically: the new folder
    is written beside the old one and swapped in only when complete."""
    out = Path(output_dir)
    tmp, old = out.with_name(out.name + ".saving"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    sd.pipeline().save_pretrained(tmp, safe_serialization=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def forever(loader):
    """Batches without end, reshuffled every pass (itertools.cycle would replay the first pass)."""
    while True:
        yield from loader


def place(module: torch.nn.Module, device, dtype: torch.dtype) -> None:
    module.to(device)
    if module.dtype != dtype:  # cast only when needed (diffusers warns on every cast)
        module.to(dtype=dtype)


def train(s: Settings, sd: StableDiffusion | None = None, on_step=None, save: bool = True) -> TrainResult:
    """Fine-tune with DreamBooth. `sd` reuses an already loaded model (the notebooks do);
    `on_step(step, logs)` is called after every optimiser step (the live loss plot uses it)."""
    s.validate()
    accelerator = Accelerator(mixed_precision=s.mixed_precision, cpu=s.device == "cpu",
                              gradient_accumulation_steps=s.gradient_accumulation_steps)
    set_seed(s.seed)
    if sd is None:
        sd = load_model(s.model, s.revision, device=accelerator.device)
    # Frozen parts run in half precision under fp16/bf16; the trained ones stay in float32
    # (the optimiser cannot update float16 weights: "Attempting to unscale FP16 gradients").
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(s.mixed_precision, torch.float32)
    place(sd.vae.requires_grad_(False), accelerator.device, frozen_dtype)
    place(sd.unet.requires_grad_(True).train(), accelerator.device, torch.float32)
    sd.text_encoder.requires_grad_(s.train_text_encoder).train(s.train_text_encoder)
    place(sd.text_encoder, accelerator.device, torch.float32 if s.train_text_encoder else frozen_dtype)

    if s.prior_preservation:
        prepare_class_images(s, sd, accelerator)
    dataset = DreamBoothDataset(s.instance_dir, s.instance_prompt, sd.tokenizer, s.resolution,
                                class_dir=s.class_dir if s.prior_preservation else None,
                                class_prompt=s.class_prompt, center_crop=s.center_crop, seed=s.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=s.train_batch_size, shuffle=True,
                                         collate_fn=collate, drop_last=len(dataset) >= s.train_batch_size)

    params = list(sd.unet.parameters())
    if s.train_text_encoder:
        params += list(sd.text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=s.adam_weight_decay)
    lr_scheduler = get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=s.lr_warmup_steps,
                                 num_training_steps=s.max_train_steps)
    # prepare() wraps what is trained for mixed precision and for several GPUs; training_step
    # then calls the wrapped modules through `sd`.
    sd.unet, optimizer, loader, lr_scheduler = accelerator.prepare(sd.unet, optimizer, loader,
                                                                  lr_scheduler)
    trained = [sd.unet]
    if s.train_text_encoder:
        sd.text_encoder = accelerator.prepare(sd.text_encoder)
        trained.append(sd.text_encoder)

    history, batches = [], forever(loader)
    bar = tqdm(range(s.max_train_steps), desc="training", disable=not accelerator.is_main_process)
    for step in bar:
        for _ in range(s.gradient_accumulation_steps):  # one optimiser step per bar tick
            with accelerator.accumulate(*trained):
                loss, logs = training_step(sd, next(batches), s.prior_loss_weight)
                if not math.isfinite(logs["loss"]):
                    raise DreamlabError(
                        f"the loss became {logs['loss']} at step {step}: lower learning_rate "
                        f"(now {s.learning_rate}) or use mixed_precision='bf16' or 'no'.")
                accelerator.backward(loss)
                if accelerator.sync_gradients and s.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, s.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)  # frees the gradients' memory
        logs.update(step=step + 1, lr=lr_scheduler.get_last_lr()[0])
        history.append(logs)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if on_step is not None:
            on_step(step + 1, logs)

    accelerator.wait_for_everyone()
    sd.unet, sd.text_encoder = accelerator.unwrap_model(sd.unet), accelerator.unwrap_model(sd.text_encoder)
    sd.unet.eval(), sd.text_encoder.eval()
    # The frozen parts ran in half precision under fp16/bf16: back to float32, so that the
    # pipeline (whose dtypes must agree) can sample with the result.
    for module in (sd.vae, sd.text_encoder):
        place(module, accelerator.device, torch.float32)
    out = None
    if save and accelerator.is_main_process:
        out = save_model(sd, s.output_dir)
    return TrainResult(sd=sd, history=history, output_dir=out)
