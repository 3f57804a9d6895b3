"""Pretrain the toy Stable Diffusion from scratch, on a CPU, on the toy world (dreamlab/toyworld.py).

Real SD cannot be fine-tuned on a CPU in lesson time, and the offline model (dreamlab/offline.py)
has random weights. This toy SD has the same parts and classes as SD v1 (AutoencoderKL,
UNet2DConditionModel, CLIPTextModel, SD v1's real tokenizer and noise schedule), only tiny, and
it has learned something: to draw the toy world's balls, boxes, stars and rings from captions.
The result is a diffusers folder that dreamlab.load_model() opens exactly as it opens real SD.

    python scripts/pretrain_toy.py                       # the full recipe -> dreamlab/assets/toy-sd
    python scripts/pretrain_toy.py --vae-steps 30 --unet-steps 30 --out build/toy-smoke   # smoke

Recipe (seed 0), two stages, as SD itself was trained:
  1. the VAE (0.68M parameters): 64x64x3 pictures <-> 16x16x4 latents, 800 steps at batch 32,
     L1 reconstruction loss + SD's tiny KL term. NB: our VAE shrinks pictures 4 times, not 8 as
     SD's does: at 64 px, 8 times would leave 8x8 latents, too coarse for stripes and dots.
     Afterwards its latents are rescaled so that SD's scaling factor, 0.18215, still gives them
     unit variance (that is how SD's authors chose 0.18215).
  2. the UNet (2.7M; channels 32/64/96, cross-attention at 8x8 and 4x4 only) and the text
     encoder (3.3M, almost all of it the 49,408-word embedding table; 2 layers of width 64),
     together, 5,000 steps at batch 64 on 50,000 pictures: SD's noise schedule (scaled_linear,
     0.00085 to 0.012, 1,000 steps), epsilon prediction, captions with words dropped and 10% empty
     (for classifier-free guidance).
  Fast-on-CPU choices: the 50,000 pictures drawn and encoded once (2.4 min; each is used about 6
  times, with its own noise, timestep, caption and latent sample each time: drawing and encoding
  64 fresh pictures every step cost a fifth of the step), AdamW at 1e-3 with warmup and cosine
  decay, Min-SNR-5 loss weights (Hang et al., 2023: the low-noise timesteps weigh less; training
  converges faster), an EMA of the weights (2 ms a step), glibc told to keep freed memory.
  The weights are saved in float16 (half the size); the configs say float32, so diffusers' own
  from_pretrained, like load_model, reads them back in float32.

Offset noise (stage 2, --offset-noise 0.2): with 16x16 latents, SD's schedule leaves each
  picture's mean colour visible even at t=999; trained on plain noise, the model learned to read
  the background from that leak instead of from the caption, and drew grass for "on snow"
  (prompt fidelity about 0.3). With offset noise the judge finds the asked-for context in 92-100%.

How dreamlab/assets/toy-sd was made: `python scripts/pretrain_toy.py` (these defaults, seed 0, the course's
  2-core CPU): 59.5 min (VAE 0.62 s/step, PSNR 20.3 dB on new pictures; the 50,000 pictures
  2.4 min; UNet 0.58 s/step, last loss 0.0248, Min-SNR-weighted). The run is exactly repeatable:
  its VAE is bit-identical to the one an earlier run made for the previous model.
  Beware timing on this machine: the same step measured 0.64 s one hour and 0.84 s two hours
  later, so this recipe takes from about 55 to 65 min. The previous model, same recipe but fresh
  pictures every step (--pictures 0), took 68 min; in one hour, alternating 120-step runs of
  stage 2 took 0.63 and 0.67 s a step with fresh pictures, 0.49 and 0.55 s with the 50,000.
  And the model came out better, not worse (benchmarks/toy_dreambooth.py, README): the lessons'
  fine-tune puts the striped ball in new contexts 0.99 of the time (previous model 0.85; on snow
  0.99 against 0.71), with LoRA 0.96 (0.91).
  Profiled (60 steps, two threads, fresh pictures, 0.66 s a step): backward 0.30 s, the UNet's
  forward 0.14 s, the VAE encoding the 64 pictures 0.13 s, AdamW 0.03 s, the text encoder 0.02 s,
  drawing the pictures 0.015 s. torch.compile made the step slower (0.73 s) after 2.5 min of
  compiling; channels_last gained nothing. Two threads gave little: the UNet's own forward and
  backward pass went from 0.70 s on one thread to 0.47 s on two. keep_freed_memory() made the page
  faults about four times fewer and a step about 8% faster, weights bit-identical.
  Fewer steps are the wrong way to save time: 4,200 UNet steps (fresh pictures) drew random
  captions as well (all four attributes right 69%), but the subject's neighbours worse ("a red
  striped box on snow" 56% against 97%), and the lessons' fine-tune then put the striped ball on
  snow in 14% of the pictures instead of 71%. Sampling: 0.13 s an image (25 steps, guidance on).
  Weights: 14.9 MB of float16 safetensors (the text encoder's 49,408-word table is 6.3 MB of it).
  How well it draws its world: benchmarks/toy_model.py (README): shape, colour, pattern and place
  all right for 71% of random captions (the previous model 69%; the one before, 2,500 steps, 45%).
"""

import argparse
import ctypes
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import dreamlab
from dreamlab import toyworld
from dreamlab.data import to_tensor, tokenize
from dreamlab.offline import SD_V1_SCHEDULE, TOKENIZER

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
parser.add_argument("--vae-steps", type=int, default=800)
parser.add_argument("--vae-batch", type=int, default=32)
parser.add_argument("--unet-steps", type=int, default=5000)
parser.add_argument("--batch", type=int, default=64, help="batch size of stage 2")
parser.add_argument("--pictures", type=int, default=50_000,
                    help="stage 2 draws and encodes this many pictures once, then samples its batches "
                         "from them (0: fresh pictures every step)")
parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of both stages")
parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of stage 2's weights; 0: none")
parser.add_argument("--offset-noise", type=float, default=0.2,
                    help="std of a per-channel constant added to the noise in stage 2 (0: none)")
parser.add_argument("--vae-from", default="", help="reuse the VAE of this model folder (skips stage 1)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--log-every", type=int, default=100)
parser.add_argument("--out", default=str(dreamlab.ASSETS / "toy-sd"))
parser.add_argument("--samples", default="", help="also save a grid of sample pictures here (.png)")
args = parser.parse_args()


def keep_freed_memory() -> None:
    """Ask glibc (Linux's C library) to keep the memory that tensors free, for the next step.

    Every step allocates and frees the same large tensors (activations, gradients). By default
    glibc hands blocks of a few MB back to the kernel when they are freed and takes fresh pages
    the next step, which the kernel must zero: about four times as many page faults, and about 8%
    of each step on this machine. What is computed does not change, only where it is kept.
    Elsewhere than glibc this does nothing."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # blocks up to 32 MB (its maximum) come from the heap...
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # ...which is never given back
    mallopt(M_TOP_PAD, 256 << 20)  # and grows 256 MB at a time


keep_freed_memory()
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
rng = np.random.default_rng(args.seed)
SCALING_FACTOR = 0.18215  # SD v1's: latents * 0.18215 have unit variance
start = time.time()


def log(msg: str) -> None:
    print(f"[{(time.time() - start) / 60:5.1f} min] {msg}", flush=True)


def world_batch(n: int, rng: np.random.Generator) -> tuple[list, torch.Tensor]:
    """n fresh scenes and their pictures as a (n, 3, 64, 64) tensor in [-1, 1]."""
    scenes = [toyworld.random_scene(rng) for _ in range(n)]
    return scenes, torch.stack([to_tensor(toyworld.render(s)) for s in scenes])


def set_lr(optimizer, step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to zero."""
    lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def n_params(*modules) -> str:
    return f"{sum(p.numel() for m in modules for p in m.parameters()) / 1e6:.2f}M"


# ---- stage 1: the VAE -------------------------------------------------------------------------
vae = AutoencoderKL(  # three blocks, two downsamplings: 64x64x3 -> 16x16x4
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64),
    layers_per_block=1, norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3, sample_size=64, scaling_factor=SCALING_FACTOR)
log(f"stage 1: VAE {n_params(vae)} parameters, {args.vae_steps} steps at batch {args.vae_batch}")
optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
t_stage = time.time()
for step in range(0 if args.vae_from else args.vae_steps):
    lr = set_lr(optimizer, step, args.vae_steps, warmup=50)
    _, pixels = world_batch(args.vae_batch, rng)
    posterior = vae.encode(pixels).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    # SD's autoencoder loss without its perceptual and GAN terms: L1, plus KL at weight 1e-6
    # (its sums over pixels and latents turned into means: the KL term barely counts)
    loss = F.l1_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean() / pixels[0].numel()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if step % args.log_every == 0 or step == args.vae_steps - 1:
        log(f"vae step {step + 1:5d}/{args.vae_steps}  L1 {loss.item():.4f}  lr {lr:.1e}")
vae_s_per_step = (time.time() - t_stage) / max(1, args.vae_steps)
if args.vae_from:  # an earlier run's stage 1 (already rescaled below: undo nothing, skip it)
    vae = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae", torch_dtype=torch.float32)
vae.eval().requires_grad_(False)

with torch.no_grad():  # quality on pictures it never saw, then SD's latent scale
    _, pixels = world_batch(256, np.random.default_rng(args.seed + 1))
    z = vae.encode(pixels).latent_dist.mean
    mse = F.mse_loss(vae.decode(z).sample.clamp(-1, 1), pixels).item()
    psnr = 10 * math.log10(4 / mse)  # pixel range [-1, 1]: peak-to-peak 2, squared 4
    # Scale the latents by c, exactly: the encoder's mean by c (its log-variance by + 2 log c),
    # the decoder's first layer by 1/c. The pictures do not change; latents * 0.18215 ~ unit std.
    c = 1.0 if args.vae_from else 1 / (SCALING_FACTOR * z.std().item())
    vae.quant_conv.weight[:4] *= c
    vae.quant_conv.bias[:4] *= c
    vae.quant_conv.bias[4:] += 2 * math.log(c)
    vae.post_quant_conv.weight /= c
    latent_std = (vae.encode(pixels).latent_dist.mean * SCALING_FACTOR).std().item()
log(f"VAE: PSNR {psnr:.1f} dB on 256 new pictures; latents rescaled x{c:.3g}, "
    f"* {SCALING_FACTOR} -> std {latent_std:.3f}")

# ---- stage 2: the UNet and the text encoder ---------------------------------------------------
tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)  # SD v1's, 49,408 tokens
text_encoder = CLIPTextModel(CLIPTextConfig(
    vocab_size=len(tokenizer), max_position_embeddings=77, hidden_size=64, intermediate_size=256,
    num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu",  # as SD v1's CLIP
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
unet = UNet2DConditionModel(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 96), norm_num_groups=32, attention_head_dim=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),  # 16, 8, 4 px
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=text_encoder.config.hidden_size)
noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", clip_sample=False)  # SD v1's
# Min-SNR-5: weight each timestep's loss by min(SNR, 5) / SNR (SNR = signal-to-noise ratio)
snr = noise_scheduler.alphas_cumprod / (1 - noise_scheduler.alphas_cumprod)
loss_weight = snr.clamp(max=5.0) / snr
trained = list(unet.parameters()) + list(text_encoder.parameters())
ema = [p.detach().clone() for p in trained] if args.ema else []
token_ids = {}  # caption -> its 77 ids (the world has a few thousand captions)
if args.pictures:
    # Drawing and encoding 64 pictures costs about a fifth of a training step, so stage 2
    # draws and encodes its pictures once and reuses each a few times (5,000 x 64 / 50,000: 6.4),
    # as SD itself trains on a fixed set of pictures. Each use draws its own noise, timestep,
    # caption and latent: the bank keeps the encoder's mean and std, not one sample of them.
    log(f"drawing and encoding {args.pictures} pictures for stage 2")
    bank_scenes, bank_mean, bank_std = [], [], []
    with torch.no_grad():
        for first in range(0, args.pictures, 256):
            scenes, pixels = world_batch(min(256, args.pictures - first), rng)
            posterior = vae.encode(pixels).latent_dist
            bank_scenes += scenes
            bank_mean.append(posterior.mean)
            bank_std.append(posterior.std)
    bank_mean, bank_std = torch.cat(bank_mean), torch.cat(bank_std)
log(f"stage 2: UNet {n_params(unet)} + text encoder {n_params(text_encoder)} parameters, "
    f"{args.unet_steps} steps at batch {args.batch}")
optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01)
t_stage, running = time.time(), []
for step in range(args.unet_steps):
    lr = set_lr(optimizer, step, args.unet_steps, warmup=200)
    if args.pictures:
        picked = torch.from_numpy(rng.integers(0, args.pictures, args.batch))
        scenes = [bank_scenes[i] for i in picked]
        mean, std = bank_mean[picked], bank_std[picked]
        latents = (mean + std * torch.randn_like(mean)) * SCALING_FACTOR  # (B, 4, 16, 16)
    else:
        scenes, pixels = world_batch(args.batch, rng)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * SCALING_FACTOR
    captions = [toyworld.pretraining_caption(s, rng) for s in scenes]
    for caption in set(captions) - token_ids.keys():
        token_ids[caption] = tokenize(tokenizer, caption)  # dreamlab's: padded to 77, as in training
    ids = torch.stack([token_ids[caption] for caption in captions])
    noise = torch.randn_like(latents)
    if args.offset_noise:
        # With 16x16 latents, SD's schedule leaves each picture's mean colour visible even at
        # t=999, so a model trained on plain noise never learns to choose the background from the
        # caption (sampling starts from zero-mean noise and it then draws grass everywhere).
        # A random per-channel offset hides the mean: "offset noise" (Lin, 2023).
        noise += args.offset_noise * torch.randn(len(latents), latents.shape[1], 1, 1)
    timesteps = torch.randint(0, 1000, (len(latents),))
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
    loss = (loss_weight[timesteps] * ((prediction - noise) ** 2).mean(dim=(1, 2, 3))).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trained, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    decay = min(args.ema, (1 + step) / (10 + step))  # a short memory at first
    for e, p in zip(ema, trained):
        e.lerp_(p.detach(), 1 - decay)
    running.append(loss.item())
    if step % args.log_every == 0 or step == args.unet_steps - 1:
        last_loss, running = float(np.mean(running)), []
        log(f"unet step {step + 1:5d}/{args.unet_steps}  loss {last_loss:.4f}  lr {lr:.1e}")
unet_s_per_step = (time.time() - t_stage) / max(1, args.unet_steps)
with torch.no_grad():
    for e, p in zip(ema, trained):
        p.copy_(e)

# ---- save in diffusers layout, as SD's hub folder is ------------------------------------------
out = Path(args.out)
tmp = out.with_name(out.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
for module in (vae, text_encoder, unet):
    module.half()  # float16 files, half the size; load_model reads them back in float32
# ... and so does a plain StableDiffusionPipeline.from_pretrained(folder): diffusers makes its
# models in float32, and transformers reads the text encoder in the dtype its config names
text_encoder.config.dtype = torch.float32
pipe = StableDiffusionPipeline(
    vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
    scheduler=PNDMScheduler(**SD_V1_SCHEDULE), safety_checker=None, feature_extractor=None,
    requires_safety_checker=False)
pipe.save_pretrained(tmp, safe_serialization=True)
shutil.rmtree(tmp / "tokenizer")  # the tokenizer files exactly as SD's folder has them
shutil.copytree(TOKENIZER, tmp / "tokenizer")
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
megabytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6

sd = dreamlab.load_model(str(out))  # what the lessons will do
if args.samples:
    prompts = ["a photo of a red ball on grass", "a photo of a blue striped box on snow",
               "a photo of a yellow star in the night sky", "a photo of a green dotted ring on the beach",
               "a photo of a ball", "a photo of a purple box", "a photo of a star on snow", ""]
    images = dreamlab.generate(sd.pipeline(), prompts, list(range(len(prompts))), resolution=64,
                               guidance_scale=4.0)
    dreamlab.image_grid(images, cols=4, labels=prompts, size=128).save(args.samples)
log(f"done. Recipe (seed {args.seed}, {args.threads} thread(s)):\n"
    f"  VAE {n_params(sd.vae)}: {args.vae_steps} steps x batch {args.vae_batch}, "
    f"{vae_s_per_step:.2f} s/step; PSNR {psnr:.1f} dB; 16x16x4 latents, scaling {SCALING_FACTOR}\n"
    f"  UNet {n_params(sd.unet)} + text encoder {n_params(sd.text_encoder)}: {args.unet_steps} steps "
    f"x batch {args.batch}, {unet_s_per_step:.2f} s/step; last loss {last_loss:.4f}\n"
    f"  AdamW lr {args.lr}, warmup + cosine; EMA {args.ema}; Min-SNR-5; SD v1 noise schedule\n"
    f"  saved {out} ({megabytes:.1f} MB, float16 safetensors); dreamlab.load_model() opens it")
