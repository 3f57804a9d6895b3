"""The memory planner's ladder on a real GPU: for each rung, SD 1.5 trained for a few steps, its
measured peak memory against the planner's estimate, its step time, and whether an fp16 run
resumed from a checkpoint ends with exactly the weights of a run that was never stopped.

    python benchmarks/gpu_check.py                     # the whole ladder: SD 1.5, 512 px, on CUDA
    python benchmarks/gpu_check.py --rungs 2 LoRA      # rung 2 and every rung with "LoRA" in its label
    python benchmarks/gpu_check.py --text-encoder      # the ladder that trains the text encoder too
    python benchmarks/gpu_check.py --no-resume-check   # memory and speed only
    python benchmarks/gpu_check.py --device cpu --size tiny --resolution 64 --steps 2   # as the test

The model is SD 1.5's UNet, VAE and text encoder built from dreamlab.memory.SD15_CONFIGS with
random (seeded) weights, SD v1's tokenizer (dreamlab/assets) and its DDPM noise schedule: nothing
is downloaded, and random weights take the same memory and time as trained ones. The networks are
built in memory, straight on the device, once per rung (well under a second on a GPU), rather than
written as a diffusers folder and loaded with load_model, which would write 4.3 GB and read it
back for nothing. `--size tiny` builds the tests' tiny model (offline.build_random_model) that way.

First the class images are made, once for every rung (prior preservation needs them), and timed.
Then each rung of memory.rungs() (the ladder plan() climbs down) trains a fresh copy of the
weights on the course's dog photos and the class images (batch 1 + 1): 3 warm-up steps, then
--steps timed ones. Only JSON lines go to stdout (progress goes to stderr):

  {"measure": "setup", ...}         the device, the GPU and its memory, the ladder, library versions
  {"measure": "class_images", ...}  sd.pipeline() (DPM-Solver++) in fp16, 25 steps, guidance 7.5,
      batch 4: images_per_s over the batches after the first (the warm-up), batch_s their median,
      peak_allocated_gib the pipeline's peak memory
  {"measure": "rung", ...}          one per rung:
      rung, label, options    the rung's index (what --rungs takes), label and settings
      mixed_precision         what ran: on a CPU the fp16 rungs run in bf16 (accelerate has no fp16
                              on CPUs), so that the test can run them and their resume check
      estimate_gib            memory.estimate(**options)["total"]: the planner's peak
      peak_allocated_gib      torch.cuda.max_memory_allocated() over the timed steps, what the
                              estimate predicts (the counter is reset after the warm-up: set-up and
                              the first steps' one-off costs are out). null on a CPU
      peak_reserved_gib       torch.cuda.max_memory_reserved(): that plus the allocator's cache
      ratio                   peak_allocated_gib / estimate_gib
      leftover_gib            memory still allocated before the rung began: 0 unless an earlier
                              rung leaked, which would inflate this rung's peak
      step_s, timed_steps     the median step time (GPU synchronised), over how many steps
      trained_params          the weights the optimizer updates; estimate_trained_params the planner's
      train_s                 the whole train() call, set-up included
      resume_exact            fp16 rungs only: run A trains 6 steps straight; run B, the same, is
                              stopped after step 3 (SIGINT, the notebook's stop button) with a
                              checkpoint, then resumed from it to step 6. True when A's and B's
                              trained weights are bitwise equal. Both run under
                              torch.use_deterministic_algorithms(True), so that only what the
                              checkpoint did not keep (say, fp16's loss scale) can tell them apart
      resume_max_weight_diff  the largest difference between A's and B's trained weights
      resume_losses_equal     whether B's 6 losses (3 of them from the checkpoint) are A's
      resume_s                the check's wall time; resume_skipped: why there was none
      skipped                 why the rung could not run, in place of its figures (8-bit Adam
                              without bitsandbytes or off CUDA; out of memory; any other error, whose
                              traceback goes to stderr): the script goes on to the next rung
      note                    what differs from a GPU run

On a GPU: dreamlab importable (pip install -e ., or PYTHONPATH=.), diffusers installed, and
bitsandbytes for the two 8-bit rungs (without it they say "skipped"). A full fine-tune's
checkpoint is about 10 GB (weights and AdamW): it goes to /dev/shm when that has room, since
flushing it to a slow disk would take longer than the training. Time for the defaults (the whole
ladder, 8 or 9 rungs, 12 steps each, a resume check per fp16 rung), estimated, as no GPU was at
hand to measure: on an H200-class GPU 4 to 6 minutes (0.1 to 0.5 s a step: most of the time goes
to imports, the planner's estimates, building and setting up, and writing and reading the resume
checks' checkpoints), about 2 with --no-resume-check. On a T4 (14.75 GiB) 20 minutes or more:
float32 and plain fp16 need 13.5 to 15 GiB and may not fit (they say "skipped": out of memory),
the rest run at 1 to 3 s a step; there choose rungs, or --no-resume-check.
"""

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

# cuBLAS repeats itself bit for bit only with a fixed workspace, set before CUDA starts (the resume
# check needs that; 32 MiB, what Hopper GPUs take anyway)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

import dreamlab  # noqa: E402
from dreamlab import DreamlabError, Settings, StableDiffusion, memory, train  # noqa: E402
from dreamlab.offline import SD_V1_SCHEDULE, TOKENIZER, build_random_model  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--device", default="cuda", help='"cuda" (the default) or "cpu"')
parser.add_argument("--size", choices=("sd15", "tiny"), default="sd15",
                    help="sd15: SD 1.5's architecture; tiny: the tests' model, for a CPU")
parser.add_argument("--resolution", type=int, default=512)
parser.add_argument("--steps", type=int, default=9, help="timed steps per rung (after 3 warm-up steps)")
parser.add_argument("--rungs", nargs="+", default=None,
                    help="rung indices (the setup line lists the ladder) or parts of labels; default: all")
parser.add_argument("--text-encoder", action="store_true", help="train the text encoder too, on every rung")
parser.add_argument("--class-images", type=int, default=16,
                    help="made once, in batches of 4; the first batch is the warm-up")
parser.add_argument("--no-resume-check", action="store_true", help="skip the fp16 resume check")
parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

WARMUP = 3  # steps before timing: CUDA's lazy start-up, the optimizer's state, the allocator's growth
RESUME_AT = 3  # the resume check stops run B after this step; both runs train twice as many
SEED = 0
BATCH = 4  # class images per pipeline call
DEVICE = torch.device(args.device)
CUDA = DEVICE.type == "cuda"
GiB = 2**30


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)  # at once: a run cut short keeps the lines it printed


def sync() -> None:
    if CUDA:  # the GPU runs behind Python: wait for it before reading the clock
        torch.cuda.synchronize()


def gib(nbytes: int) -> float:
    return round(nbytes / GiB, 3)


def architecture(tmp: Path) -> tuple[dict, str]:
    """The three networks' configs, and the model name memory.estimate() knows them by."""
    if args.size == "sd15":
        return memory.SD15_CONFIGS, memory.SD15
    folder = build_random_model(tmp / "tiny-sd", size="tiny")  # a few MB; its configs are what we need
    return memory.model_configs(str(folder)), str(folder)


def build_model(job: dict) -> StableDiffusion:
    """SD with random weights, made on the device; the same seed gives the same weights every time."""
    torch.manual_seed(SEED)
    configs = job["configs"]
    with DEVICE:  # the weights are created on the GPU directly: no 4 GB copy from the CPU
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
    return StableDiffusion(tokenizer=job["tokenizer"], text_encoder=text_encoder, vae=vae, unet=unet,
                           noise_scheduler=DDPMScheduler.from_config(SD_V1_SCHEDULE),
                           name=f"random {args.size}")


def free_memory() -> None:
    gc.collect()  # what a finished (or failed) run left in reference cycles, and its GPU memory
    if CUDA:
        torch.cuda.empty_cache()


def why(error: Exception) -> str:
    """One line for the JSON; the whole traceback on stderr when the error was not foreseen."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "out of memory: " + ". ".join(str(error).split(". ")[:3])  # what it asked for, and had
    if not isinstance(error, DreamlabError):
        traceback.print_exception(error, file=sys.stderr)
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"


def make_class_images(job: dict, prompt: str) -> dict:
    """Prior preservation's class images, made once for every rung, and timed: images per second."""
    start = time.perf_counter()
    sd = build_model(job)
    build_s = time.perf_counter() - start
    dtype = torch.float16 if CUDA else torch.float32  # half precision is for GPUs
    for module in (sd.unet, sd.vae, sd.text_encoder):  # (nn.Module's own .to: diffusers' would warn)
        torch.nn.Module.to(module, dtype=dtype)
    pipe = sd.pipeline()  # with its default sampler, DPM-Solver++
    folder = job["class"]
    folder.mkdir(parents=True)
    times, made = [], []
    for first in range(0, args.class_images, BATCH):
        n = min(BATCH, args.class_images - first)
        if first == BATCH and CUDA:  # the first batch was the warm-up
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        images = pipe([prompt] * n, height=args.resolution, width=args.resolution, num_inference_steps=25,
                      guidance_scale=7.5, generator=torch.Generator(DEVICE).manual_seed(first)).images
        sync()
        times.append(time.perf_counter() - start)
        made.append(n)
        for i, image in enumerate(images):
            image.save(folder / f"class-{first + i:05d}.png")
    row = {"measure": "class_images", "images": args.class_images, "batch": BATCH, "inference_steps": 25,
           "guidance_scale": 7.5, "resolution": args.resolution, "dtype": str(dtype).removeprefix("torch."),
           "scheduler": type(pipe.scheduler).__name__, "timed_batches": len(times) - 1,
           "images_per_s": None, "batch_s": None, "peak_allocated_gib": None, "build_s": round(build_s, 2)}
    if len(times) > 1:
        row.update(images_per_s=round(sum(made[1:]) / sum(times[1:]), 3),
                   batch_s=round(statistics.median(times[1:]), 3))
        if CUDA:
            row["peak_allocated_gib"] = gib(torch.cuda.max_memory_allocated())
    if not CUDA:
        row["note"] = "float32 on a CPU: not the GPU's fp16 figure"
    return row


def runnable(options: dict) -> tuple[dict, str | None]:
    """The rung's options as they can run here (fp16 becomes bf16 on a CPU), and a note if changed."""
    if options["mixed_precision"] == "fp16" and not CUDA:
        return {**options, "mixed_precision": "bf16"}, "fp16 needs CUDA: ran in bf16 on the CPU"
    return options, None


def rung_settings(options: dict, job: dict, name: str, steps: int, **more) -> Settings:
    """The Settings of one training run: the course's dog photos and the shared class images."""
    return Settings(class_dir=str(job["class"]), output_dir=str(job["tmp"] / name),
                    num_class_images=args.class_images, device=args.device, resolution=args.resolution,
                    train_batch_size=1, prior_preservation=True, max_train_steps=steps, seed=SEED,
                    learning_rate=1e-4 if options["lora"] else 5e-6, **options, **more)


def quiet_train(s: Settings, sd: StableDiffusion, on_step=None):
    with contextlib.redirect_stdout(sys.stderr):  # train() prints notes; stdout is for JSON lines
        return train(s, sd=sd, on_step=on_step, save=False)


def trained_weights(sd: StableDiffusion) -> dict:
    return {f"{part}.{name}": p for part in ("unet", "text_encoder")
            for name, p in getattr(sd, part).named_parameters() if p.requires_grad}


def measure(options: dict, job: dict) -> dict:
    """Train WARMUP + --steps steps; time the steps after the warm-up, and take their peak memory."""
    stamps, peak = [], {}
    total = WARMUP + args.steps

    def on_step(step, logs):
        sync()
        stamps.append(time.perf_counter())
        if CUDA and step == WARMUP:  # from here on, the peak is that of the timed steps
            torch.cuda.reset_peak_memory_stats()
        if CUDA and step == total:  # read now, before train() casts the frozen parts to float32
            peak.update(allocated=torch.cuda.max_memory_allocated(),
                        reserved=torch.cuda.max_memory_reserved())

    leftover = torch.cuda.memory_allocated() if CUDA else None
    s = rung_settings(options, job, "measure", total)
    start = time.perf_counter()
    result = quiet_train(s, build_model(job), on_step)
    train_s = time.perf_counter() - start
    steps = [b - a for a, b in zip(stamps[WARMUP - 1:], stamps[WARMUP:])]
    return {"peak_allocated_gib": gib(peak["allocated"]) if CUDA else None,
            "peak_reserved_gib": gib(peak["reserved"]) if CUDA else None,
            "leftover_gib": gib(leftover) if CUDA else None,
            "step_s": round(statistics.median(steps), 4), "timed_steps": len(steps),
            "trained_params": sum(p.numel() for p in trained_weights(result.sd).values()),
            "train_s": round(train_s, 1)}


@contextlib.contextmanager
def deterministic():
    """Kernels that repeat themselves bit for bit (cuDNN's, and flash attention's backward, switch to
    slower exact versions), so that two runs can differ only through what a checkpoint lost."""
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def resume_check(options: dict, job: dict) -> dict:
    """Run A: 2k steps straight. Run B: the same, stopped after step k with a checkpoint (as the
    stop button does), then resumed from it to step 2k. The same weights at the end?"""
    k, start = RESUME_AT, time.perf_counter()
    straight = rung_settings(options, job, "resume-a", 2 * k)
    stopped = rung_settings(options, job, "resume-b", 2 * k, checkpointing_steps=k)

    def stop_after_k(step, logs):
        if step == k:  # train() finishes this step, writes a checkpoint and returns
            os.kill(os.getpid(), signal.SIGINT)

    try:
        with deterministic():
            a = quiet_train(straight, build_model(job))
            a_weights = {name: p.detach().cpu() for name, p in trained_weights(a.sd).items()}
            a_losses = [h["loss"] for h in a.history]
            del a
            free_memory()
            first = quiet_train(stopped, build_model(job), stop_after_k)
            if not first.stopped_early or first.checkpoint is None:
                raise RuntimeError(f"run B did not stop after step {k} with a checkpoint")
            del first
            free_memory()
            # checkpointing_steps=0: no second checkpoint to write; resume_from finds the first
            b_steps = []
            b = quiet_train(replace(stopped, resume_from="latest", checkpointing_steps=0),
                            build_model(job), lambda step, logs: b_steps.append(step))
    finally:  # a full fine-tune's checkpoint is 10 GB: make room for the next rung's
        for name in ("resume-a", "resume-b", "resume-b-checkpoints"):
            shutil.rmtree(job["tmp"] / name, ignore_errors=True)
    if b_steps[0] != k + 1:  # train() starts afresh when it takes the checkpoint for another run's
        raise RuntimeError(f"run B did not resume from its checkpoint: it began at step {b_steps[0]}")
    diff = max((a_weights[name].to(p.device) - p.detach()).abs().max().item()
               for name, p in trained_weights(b.sd).items())
    return {"resume_exact": diff == 0.0, "resume_max_weight_diff": diff,
            "resume_losses_equal": [h["loss"] for h in b.history] == a_losses,
            "resume_s": round(time.perf_counter() - start, 1)}


def run_rung(index: int, label: str, options: dict, job: dict) -> dict:
    """One rung's JSON line: the estimate, then what training measured (or why it could not run)."""
    ran, note = runnable(options)
    estimate = memory.estimate(model=job["model"], resolution=args.resolution, **ran)
    row = {"measure": "rung", "rung": index, "label": label, "options": options,
           "mixed_precision": ran["mixed_precision"], "estimate_gib": round(estimate["total"], 3),
           "estimate_trained_params": estimate["trained_params"]}
    if not CUDA:
        note = "; ".join(filter(None, [note, "no CUDA memory on a CPU: the peak figures are null"]))
    if note:
        row["note"] = note
    log(f"rung {index}: {label} (estimate {estimate['total']:.2f} GiB)")
    try:
        row.update(measure(ran, job))
    except Exception as e:  # 8-bit Adam without bitsandbytes, out of memory, ...: say why, go on
        row["skipped"] = why(e)
        return row
    finally:
        free_memory()
    row["ratio"] = round(row["peak_allocated_gib"] / row["estimate_gib"], 3) if CUDA else None
    row.update(resume_exact=None, resume_max_weight_diff=None, resume_losses_equal=None)
    if options["mixed_precision"] != "fp16":
        row["resume_skipped"] = "not fp16: no loss scale to lose"
    elif args.no_resume_check:
        row["resume_skipped"] = "--no-resume-check"
    else:
        try:
            row.update(resume_check(ran, job))
        except Exception as e:
            row["resume_skipped"] = why(e)
        finally:
            free_memory()
    return row


def chosen_rungs(ladder: list) -> list[int]:
    """--rungs: indices ("8" is rung 8, not the 8-bit ones), or parts of labels (case ignored)."""
    if not args.rungs:
        return list(range(len(ladder)))
    picked = set()
    for wanted in args.rungs:
        if wanted.isdigit():
            found = [int(wanted)] if int(wanted) < len(ladder) else []
        else:
            found = [i for i, (label, _) in enumerate(ladder) if wanted.lower() in label.lower()]
        if not found:
            labels = "; ".join(f"{i}: {label}" for i, (label, _) in enumerate(ladder))
            parser.error(f"--rungs {wanted!r} matches no rung of the ladder ({labels})")
        picked.update(found)
    return sorted(picked)


def scratch_folder() -> str | None:
    """Where checkpoints go: in memory (/dev/shm) when it has room, else the system's temporary folder."""
    shm = Path("/dev/shm")
    if CUDA and shm.is_dir() and shutil.disk_usage(shm).free > 32 * GiB:
        return str(shm)
    return None


def bitsandbytes_version() -> str | None:
    try:
        import bitsandbytes
    except ImportError:
        return None
    return bitsandbytes.__version__


def main():
    if args.class_images < 1 or args.steps < 1 or args.resolution % 8:
        parser.error("--class-images and --steps must be at least 1, --resolution a multiple of 8")
    if CUDA and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: give --device cpu (with --size tiny --resolution 64 for speed)")
    ladder = list(memory.rungs(**({"train_text_encoder": True} if args.text_encoder else {})))
    picked = chosen_rungs(ladder)
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=scratch_folder()) as tmp:
        configs, model = architecture(Path(tmp))
        # what every training run shares: the scratch folder, the class images, the architecture
        job = {"tmp": Path(tmp), "class": Path(tmp) / "class-images", "configs": configs, "model": model,
               "tokenizer": CLIPTokenizer.from_pretrained(TOKENIZER)}  # SD v1's, shipped with dreamlab
        emit({"measure": "setup", "device": str(DEVICE), "size": args.size, "resolution": args.resolution,
              "gpu": torch.cuda.get_device_name() if CUDA else None,
              "gpu_gib": round(memory.gpu_memory_gib(), 2) if CUDA else None,
              "ladder": [label for label, _ in ladder], "rungs": picked, "text_encoder": args.text_encoder,
              "warmup_steps": WARMUP, "timed_steps": args.steps, "scratch": tmp, "torch": torch.__version__,
              "dreamlab": dreamlab.__version__, "bitsandbytes": bitsandbytes_version()})
        log("making the class images")
        emit(make_class_images(job, Settings.class_prompt))
        free_memory()
        for index in picked:
            label, options = ladder[index]
            emit(run_rung(index, label, options, job))


if __name__ == "__main__":
    main()
