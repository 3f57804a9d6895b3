"""Speed and memory of one DreamBooth training configuration on this machine: one JSON line.

    python benchmarks/train_step.py                          # small SD, 256 px, prior, cached latents
    python benchmarks/train_step.py --no-cache               # encode the pictures at every step
    python benchmarks/train_step.py --lora --resolution 512 --steps 30 --threads 2

The default model is "small": SD 1.x's topology (UNet channels 64/128/256/256, two layers per
block, cross-attention in the first three blocks; VAE 32/64/128/128; a 4-layer text encoder of
width 128) with random weights, built in a few seconds. `--model` takes any diffusers folder.
Each run is its own process, so `peak_rss_mib` (the process's peak resident memory, libraries
and class-image generation included, as in diffusers' script) belongs to this configuration
alone; `train_peak_rss_mib` is the peak during training only (Linux: the peak is reset first).

Reference: diffusers' examples/dreambooth/train_dreambooth.py (commit 000280f5), run side by side
on this machine with the same small model and settings (256 px, prior preservation, batch 1,
fp32, one thread): median 1.33 and 1.38 s a step, peak RSS 1412 and 1396 MiB (the issue had
measured 1.10 s and 1.39 GiB). Its only import that does not work here is torchvision (which does
not import beside this torch): it ran with a stand-in for the five transforms it uses, and its
copy was patched only to time its steps. `vs_diffusers_*` are our/its ratios. Targets with
cached latents: step time <= 0.6x, peak RSS <= 0.8x.
"""

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="small", help='"small" (built here) or a diffusers folder')
parser.add_argument("--resolution", type=int, default=256)
parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--lora", action="store_true")
parser.add_argument("--no-cache", action="store_true", help="encode pictures and prompts every step")
parser.add_argument("--prior", action=argparse.BooleanOptionalAction, default=True)
parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                    help="the optimizer step fused into the backward pass")
parser.add_argument("--text-encoder", action="store_true", help="train the text encoder too")
parser.add_argument("--gradient-checkpointing", action="store_true")
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"],
                    help="bf16: autocast on the CPU too (fast where the CPU has AVX512-BF16 or AMX)")
parser.add_argument("--photos", default=None, help="default: the course's dog photos")
args = parser.parse_args()
torch.set_num_threads(args.threads)

import dreamlab  # noqa: E402  (after set_num_threads)
from dreamlab.offline import build_random_model  # noqa: E402


def vm_hwm_mib() -> float | None:
    """This process's peak resident memory since the last reset (Linux), in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak (VmHWM) to the current RSS
    except OSError:
        pass


REFERENCE = {"step_s": 1.354, "peak_rss_mib": 1404}  # diffusers' script, see above (mean of two runs)
WARMUP = 3

with tempfile.TemporaryDirectory() as tmp:
    model = args.model
    if model == "small":
        model = str(build_random_model(Path(tmp) / "small-sd", size="small"))
    s = dreamlab.Settings(
        model=model, instance_dir=args.photos or str(dreamlab.ASSETS / "instance" / "dog"),
        output_dir=f"{tmp}/out", class_dir=f"{tmp}/class",
        device="cpu", resolution=args.resolution, max_train_steps=args.steps + WARMUP,
        learning_rate=1e-4 if args.lora else 5e-6, lora=args.lora, prior_preservation=args.prior,
        num_class_images=4, sample_batch_size=4, num_inference_steps=2, center_crop=True,
        cache_latents=not args.no_cache, fused_optimizer_step=args.fused,
        train_text_encoder=args.text_encoder, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing)
    if args.prior:  # the class images are made before timing: not part of a step
        sd = dreamlab.load_model(model)
        dreamlab.generate_class_images(sd.pipeline(), s.class_dir, s.class_prompt, s.num_class_images,
                                       batch_size=4, resolution=s.resolution, num_inference_steps=2)
        del sd
    reset_peak_rss()
    stamps = []
    start = time.perf_counter()
    result = dreamlab.train(s, on_step=lambda step, logs: stamps.append(time.perf_counter()), save=False)
    total = time.perf_counter() - start
    steps = [b - a for a, b in zip(stamps[WARMUP - 1:], stamps[WARMUP:])]

peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
row = {
    "model": args.model, "resolution": args.resolution, "lora": args.lora, "cache": not args.no_cache,
    "prior": args.prior, "fused": args.fused, "text_encoder": args.text_encoder,
    "mixed_precision": args.mixed_precision, "checkpointing": args.gradient_checkpointing,
    "threads": args.threads,
    "median_step_s": round(statistics.median(steps), 3), "peak_rss_mib": round(peak),
    "train_peak_rss_mib": round(vm_hwm_mib() or peak),
    "train_s_with_setup": round(total, 1), "timed_steps": len(steps),
    "vs_diffusers_step": round(statistics.median(steps) / REFERENCE["step_s"], 2),
    "vs_diffusers_rss": round(peak / REFERENCE["peak_rss_mib"], 2),
    "python": sys.version.split()[0], "torch": torch.__version__,
}
print(json.dumps(row))
