"""Does the course fit a free Colab account? Each lesson's GPU memory, Google Drive space and T4 minutes.

    python benchmarks/colab_budget.py                  # prints benchmarks/README.md's table
    python benchmarks/colab_budget.py --photos FOLDER  # photos to measure a class image's PNG size on

A free Colab account has a T4 (15 GB, of which PyTorch sees 14.75 GiB), 12.7 GB of RAM, and Google
Drive's 15 GB shared with the learner's own files. Each lesson runs on a fresh Colab machine. No T4
exists here, so almost every figure is an estimate, made from the work each lesson's Colab branch
does (its cells, counted below) and from
  - GPU memory: the memory planner (dreamlab/memory.py, on PyTorch's meta device), plus the CUDA context;
  - Drive: the size of each file written there, from the models' parameter counts;
  - T4 minutes: the work (pictures x sampling steps, training steps, downloads, files written) at the
    T4 rates below, each with its source, and a few assumptions, each labelled so.
The course's targets: every lesson under 13 GiB; Drive used by the course at most 6 GB at any moment
and at most 4 GB once the last lesson is done; the whole course in at most 60 T4 minutes.
"""

import argparse
import dataclasses
import functools
import io
import math
import os
from pathlib import Path

import torch

from dreamlab import colab, memory
from dreamlab.data import IMAGE_SUFFIXES, open_image, resize_and_crop
from dreamlab.settings import ASSETS

GB, MB = 1e9, 1e6

# ----------------------------------------------------------------------------------------
# T4 rates, each from a source

# diffusers' docs, docs/source/en/optimization/torch2.0.md, tables "T4 (batch size: 1)" and "T4 (batch
# size: 4)", row "SD - txt2img", column "torch 2.0 - no compile": SD 1.5 in fp16 with PyTorch 2's fused
# attention (SDPA). One "it" is one denoising step of the whole batch, classifier-free guidance included.
SAMPLING_IT_PER_S = {1: 6.9, 4: 1.79}
SAMPLING_SOURCE = ("diffusers docs, optimization/torch2.0.md, tables 'T4 (batch size: 1)' and "
                   "'T4 (batch size: 4)', SD - txt2img, torch 2.0 - no compile")
# TheLastBen/fast-stable-diffusion issue #2330 (2023-07-14): DreamBooth of SD 1.5's UNet at 640 px "on
# GColab Free T4 it's about 0.85 it/s" (one image a step).
TRAIN_IT_PER_S, TRAIN_PIXELS = 0.85, 640
TRAIN_SOURCE = ("TheLastBen/fast-stable-diffusion issue #2330 (2023-07-14): "
                "'on GColab Free T4 it's about 0.85 it/s'")
CHECKPOINTING_SLOWER = 1.25  # gradient checkpointing recomputes activations: ~25 % slower (memory.LADDER)

# ----------------------------------------------------------------------------------------
# Assumptions: no source for these, and the output says so
HUB_MB_PER_S = 100  # downloading from the Hugging Face hub on Colab
DISK_MB_PER_S = 50  # writing a file to Google Drive (or to the local disk)
PIP_MINUTES = 0.5  # each lesson's first cell: pip install of the course's package
LOAD_MINUTES = 0.5  # one load_model(): reading 2 to 4 GB of weights and moving them to the GPU
HAND_STEP_MINUTES = 1.0  # lesson 3's step by hand in float32 (a few passes, one small AdamW per weight)
# lesson 4's metrics: facebook/dino-vits16 and openai/clip-vit-base-patch32, in float32
EMBEDDERS_GB = 0.09 + 0.61
ESTIMATE_SECONDS = 3  # one memory-planner estimate on Colab's 2 CPU cores (2 to 5 s on this course's)
# LoRA: a step is assumed to cost what a full fine-tune's step costs without gradient checkpointing
# (conservative: LoRA computes no gradients for the frozen weights and has almost no optimizer step)
YOUR_PHOTOS_BYTES = 10 * 3 * MB  # lesson 2: ten phone photos of 3 MB in MyDrive/dreamlab/my-photos
# memory.py's docstring: "the CUDA context (0.3 to 0.5 GiB that nvidia-smi shows and PyTorch does not)"
CUDA_CONTEXT_GIB = 0.5
COURSE_GIB, DRIVE_PEAK_GB, DRIVE_END_GB, COURSE_MINUTES = colab.COURSE_GIB, 6.0, 4.0, 60.0
LESSONS = ["inside Stable Diffusion", "datasets", "fine-tuning", "comparing outputs", "training engine"]

# Drawing with SD 1.5 in fp16 (memory.estimate_sampling), estimated once per batch size
sampling = functools.cache(memory.estimate_sampling)


def sampling_minutes(pictures: int, batch: int, steps: int) -> float:
    """Drawing `pictures` in batches of `batch`: seconds per step interpolated between the two measured
    batch sizes (1 and 4; per picture they cost nearly the same)."""
    def seconds_per_step(n):
        one, four = 1 / SAMPLING_IT_PER_S[1], 1 / SAMPLING_IT_PER_S[4]
        return one + (n - 1) * (four - one) / 3
    full, rest = divmod(pictures, batch)
    return steps * (full * seconds_per_step(batch) + (seconds_per_step(rest) if rest else 0)) / 60


def training_minutes(s, steps: int) -> float:
    """`steps` training steps with settings `s`: the measured rate scaled to s.resolution by pixel
    count and to 2 images a step (prior preservation) by image count: an estimate."""
    per_image = (1 / TRAIN_IT_PER_S) * (s.resolution / TRAIN_PIXELS) ** 2
    images = s.train_batch_size * (2 if s.prior_preservation else 1)
    slower = CHECKPOINTING_SLOWER if s.gradient_checkpointing else 1
    return steps * images * per_image * slower / 60


def write_minutes(gb: float) -> float:
    return gb * GB / MB / DISK_MB_PER_S / 60


def png_megabytes(folder: Path, most: int = 12) -> tuple[float, int]:
    """A class image's PNG size: photos resized and cropped to 512 px, saved as PNG as
    generate_class_images() saves them; their mean size in MB, and how many were measured."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no photos in {folder}: give --photos a folder of photos")
    files = files[::math.ceil(len(files) / most)]  # spread over the subjects
    sizes = []
    for path in files:
        buffer = io.BytesIO()
        resize_and_crop(open_image(path), 512).save(buffer, format="PNG")
        sizes.append(buffer.tell())
    return sum(sizes) / len(sizes) / MB, len(sizes)


# ----------------------------------------------------------------------------------------
# Google Drive, file by file


BIN_SOURCE = ("Google Drive Help: \"Items in your bin take up storage in Google "
              "Drive until they're deleted forever\" (after 30 days); files deleted through Colab's mount go "
              "there too (minimaxir/gpt-2-simple issue #155)")


class Drive:
    """MyDrive/dreamlab: what is there, its peak, and the bin. Google Drive keeps a deleted file in its
    bin, counted against the 15 GB, for 30 days (BIN_SOURCE)."""

    def __init__(self):
        self.files, self.bin, self.peak, self.peak_with_bin = {}, 0.0, 0.0, 0.0

    @property
    def used(self) -> float:
        return sum(self.files.values())

    def write(self, name: str, gb: float) -> None:
        if name in self.files:  # replaced: the old file goes to the bin
            self.delete(name)
        self.files[name] = gb
        self.peak = max(self.peak, self.used)
        self.peak_with_bin = max(self.peak_with_bin, self.used + self.bin)

    def delete(self, name: str) -> None:
        self.bin += self.files.pop(name)

    def new_lesson(self) -> None:
        self.peak, self.peak_with_bin = self.used, self.used + self.bin

    def folders(self) -> dict:
        """GB per top folder."""
        sizes = {}
        for name, gb in self.files.items():
            sizes[name.split("/")[0]] = sizes.get(name.split("/")[0], 0) + gb
        return sizes


def train_to_drive(drive: Drive, s, start: int, stop: int, checkpoint_gb: float, model_gb: float,
                   samples_gb: float) -> float:
    """What train() writes to Drive from step `start` to `stop`: a grid of samples at step 0 and every
    s.validation_steps, a checkpoint every s.checkpointing_steps (the newest s.checkpoints_total_limit
    kept, an old one deleted only once the new one is complete; compact ones: none at the last step,
    and all deleted once the model is saved), then the model (the old one deleted first when there is a
    checkpoint to fall back on, as runs.save_model does). Returns the GB written."""
    written, name = 0.0, Path(s.output_dir).name
    for step in range(start, stop + 1):
        if s.validation_steps and step % s.validation_steps == 0 and (step > start or start == 0):
            drive.write(f"{name}-samples/step-{step}.png", samples_gb)
            written += samples_gb
        last_and_compact = s.compact_checkpoints and step == s.max_train_steps
        due = step > start and s.checkpointing_steps and step % s.checkpointing_steps == 0
        if due and not last_and_compact:
            drive.write(f"{name}-checkpoints/{step}", checkpoint_gb)
            written += checkpoint_gb
            kept = [f for f in drive.files if f.startswith(f"{name}-checkpoints/")]
            for old in kept[:-s.checkpoints_total_limit]:
                drive.delete(old)
    drive.write(f"{name}/model", model_gb)  # (LoRA: its adapters; a full fine-tune: the whole pipeline)
    if s.compact_checkpoints and stop == s.max_train_steps:
        for done in [f for f in drive.files if f.startswith(f"{name}-checkpoints/")]:
            drive.delete(done)
    return written + model_gb


# ----------------------------------------------------------------------------------------
# The lessons: each returns {"gpu": {what: GiB}, "minutes": {what: minutes}, "local": GB on this disk}


def options(s) -> dict:
    """The memory planner's options of settings `s`."""
    return {k: getattr(s, k) for k in memory.DEFAULTS}


def lesson_1(sd15, drive: Drive) -> dict:
    steps = 25  # cell 2: STEPS = 25
    sample = sampling(batch=4)  # cell 29 draws 4 at once
    return dict(gpu={"SD 1.5 in fp16, drawing 4 pictures at once": sample["total"]},
                local=sd15["download_gb"],
                minutes={"pip install": PIP_MINUTES, "download SD 1.5": sd15["download_minutes"],
                         "load SD 1.5": LOAD_MINUTES,
                         # cell 25: 1 picture; cell 29: 4 prompts x 3 seeds, generate()'s default batch 4;
                         # cell 33: 4 guidance scales, 1 picture each (guidance 1.0 draws without
                         # guidance, counted with it)
                         "draw 17 pictures": sampling_minutes(1, 1, steps) + sampling_minutes(12, 4, steps)
                         + sampling_minutes(4, 1, steps)})


def lesson_2(sd15, drive: Drive, s, png_gb: float) -> dict:
    drive.write("my-photos", YOUR_PHOTOS_BYTES / GB)  # cell 6, with MY_PHOTOS = "upload" or "drive"
    # cell 22: all the class images on a GPU (NUM_CLASS_IMAGES = settings.num_class_images); cells 26
    # and 28 draw nothing (the images are there; another prompt is refused)
    drive.write("class-images", s.num_class_images * png_gb)
    sample = sampling(batch=s.sample_batch_size)
    return dict(gpu={f"SD 1.5 in fp16, drawing {s.sample_batch_size} pictures at once": sample["total"]},
                local=sd15["download_gb"],
                minutes={"pip install": PIP_MINUTES, "download SD 1.5": sd15["download_minutes"],
                         "load SD 1.5": LOAD_MINUTES,
                         f"draw {s.num_class_images} class images": sampling_minutes(
                             s.num_class_images, s.sample_batch_size, s.num_inference_steps),
                         "planner (gpu_settings)": 3 * ESTIMATE_SECONDS / 60,
                         "write them to Drive": write_minutes(s.num_class_images * png_gb)})


def lesson_3(sd15, drive: Drive, s) -> dict:
    need = memory.estimate(**options(s))  # cell 39: train() with the planner's savers
    # cells 16-37: one step by hand on the model loaded in float32, no memory savers
    # (cell 37 deletes Adam's state before it checks the step: less than this)
    hand = memory.step_by_hand(resolution=s.resolution, prior_preservation=s.prior_preservation)
    sample = sampling(batch=s.sample_batch_size)
    # gpu_settings() on Drive: compact checkpoints (the trained weights in fp16, no optimizer state)
    checkpoint_gb = 2 * need["trained_params"] / GB
    # cell 2: the dashboard's samples, 2 prompts x 1 picture at step 0 and every 200 steps, drawn
    # beside the trained weights and Adam's state; autocast keeps an fp16 copy of each float32 weight
    # it casts (the trained UNet's) until the pipeline returns
    s = dataclasses.replace(s, validation_steps=200, num_validation_images=1, validation_prompts=["a", "b"])
    shown = len(s.validation_prompts) * s.num_validation_images
    during = sampling(batch=shown)
    drawing_in_training = need["weights"] + need["optimizer"] + 2 * need["trained_params"] / 2**30 + max(
        during["denoising"], during["decoding"])
    written = train_to_drive(drive, s, 0, s.max_train_steps, checkpoint_gb, sd15["fp16_gb"], 0)
    validations = 1 + s.max_train_steps // s.validation_steps
    pictures = 4 * 4  # cell 45: 4 SAMPLE_PROMPTS x 4 seeds
    return dict(gpu={"the step by hand: float32, no savers (memory.step_by_hand)": hand,
                     f"train(): {saver_names(s)}": need["total"],
                     f"train() drawing its {shown} samples": drawing_in_training,
                     "the fine-tuned model in fp16, drawing": sample["total"]},
                local=sd15["download_gb"],
                minutes={"pip install": PIP_MINUTES, "download SD 1.5": sd15["download_minutes"],
                         "load SD 1.5": LOAD_MINUTES, "planner (gpu_settings)": 3 * ESTIMATE_SECONDS / 60,
                         "the step by hand (assumed)": HAND_STEP_MINUTES,
                         f"train {s.max_train_steps} steps": training_minutes(s, s.max_train_steps),
                         "write checkpoints and the model to Drive": write_minutes(written),
                         f"draw {validations} x {shown} samples while training":
                             validations * sampling_minutes(shown, shown, s.num_inference_steps),
                         f"draw {pictures} pictures": sampling_minutes(pictures, s.sample_batch_size,
                                                                       s.num_inference_steps)})


def lesson_4(sd15, drive: Drive, s) -> dict:
    # cell 4: lesson 3's model is "complete" (not trained again); cell 6: a run without prior
    # preservation, no checkpoints, kept in memory (not saved)
    no_prior = memory.estimate(**{**options(s), "prior_preservation": False})
    no_prior_settings = dataclasses.replace(s, prior_preservation=False)
    sample = sampling(batch=s.sample_batch_size)
    models = 3  # cell 8: base, with prior, without prior
    pictures = 5 * 2  # cell 12: 5 PROMPTS x NUM_PICTURES=2, for each model
    on_gpu = models * sample["weights"] + max(sample["denoising"], sample["decoding"])
    return dict(gpu={f"train() without prior preservation: {saver_names(s)}": no_prior["total"],
                     f"{models} models in fp16 at once, drawing": on_gpu,
                     "the same, and DINO and CLIP in fp16 (metrics)": on_gpu + EMBEDDERS_GB / 2 * GB / 2**30},
                local=sd15["download_gb"],
                minutes={"pip install": PIP_MINUTES, "download SD 1.5": sd15["download_minutes"],
                         "planner (gpu_settings)": 3 * ESTIMATE_SECONDS / 60,
                         f"train {s.max_train_steps} steps without prior": training_minutes(
                             no_prior_settings, s.max_train_steps),
                         f"load SD 1.5 {models} times": models * LOAD_MINUTES,  # train(), then cell 8 twice
                         f"draw {models} x {pictures} pictures": models * sampling_minutes(
                             pictures, s.sample_batch_size, s.num_inference_steps),
                         # cell 28: the paper's metrics; embedding a few dozen pictures takes seconds
                         "download DINO and CLIP (the paper's metrics)":
                             EMBEDDERS_GB * GB / MB / HUB_MB_PER_S / 60})


def lesson_5(sd15, drive: Drive, full, lora, png_gb: float) -> dict:
    # cell 2 (on a GPU): FIRST_STEPS, VALIDATION_STEPS, CHECKPOINTING_STEPS, NUM_PICTURES = 300, 100, 150, 2,
    # 2 validation prompts (NEW_CONTEXTS), num_validation_images=4, checkpoints_total_limit=2
    first_steps, num_pictures = 300, 2
    new_contexts = [f"{lora.instance_prompt} on the beach", f"{lora.instance_prompt} in the snow"]
    lora = dataclasses.replace(lora, validation_steps=100, checkpointing_steps=150, checkpoints_total_limit=2,
                               num_validation_images=4, validation_prompts=new_contexts)
    need = memory.estimate(**options(lora))
    sample = sampling(batch=lora.sample_batch_size)
    drawing = max(sample["denoising"], sample["decoding"])
    # samples at step 0, then every validation_steps: in the first run and in the resumed one
    validations = 1 + lora.max_train_steps // lora.validation_steps
    grid = len(lora.validation_prompts) * lora.num_validation_images
    # LoRA checkpoints: the adapters in float32 and AdamW's two moments (not compact); the adapters
    # saved in fp16, with a model card and its num_validation_images sample pictures
    checkpoint_gb, adapters_gb = 12 * need["trained_params"] / GB, 2 * need["trained_params"] / GB
    model_gb = adapters_gb + lora.num_validation_images * png_gb
    written = train_to_drive(drive, lora, 0, first_steps, checkpoint_gb, model_gb, grid * png_gb)  # cell 10
    written += train_to_drive(drive, lora, first_steps, lora.max_train_steps, checkpoint_gb, model_gb,
                              grid * png_gb)  # cell 16: resumed from step 300
    # cell 4: table(train_text_encoder=True), 9 settings; cell 24: LoRA with checkpointing; gpu_settings twice
    estimates = 3 + 1 + 9 + 1
    pictures = 2 * 4 * num_pictures  # cell 26: 2 pipelines x 4 PROMPTS x NUM_PICTURES
    return dict(gpu={f"train() LoRA rank {lora.lora_rank}: {saver_names(lora)}": need["total"],
                     "LoRA samples while training": need["weights"] + drawing,
                     # cell 26: full_sd, the LoRA pipeline, and lora_result.sd (cell 18) still held
                     "3 models in fp16 at once, drawing": 3 * sample["weights"] + drawing},
                local=sd15["download_gb"] + sd15["fp16_gb"],  # cell 30: the single file on this disk
                minutes={"pip install": PIP_MINUTES, "download SD 1.5": sd15["download_minutes"],
                         "planner (tables, plans)": estimates * ESTIMATE_SECONDS / 60,
                         "load SD 1.5 4 times": 4 * LOAD_MINUTES,  # train() twice, cell 26 twice
                         f"train LoRA {lora.max_train_steps} steps": training_minutes(lora,
                                                                                      lora.max_train_steps),
                         f"samples while training ({validations} x {grid})": validations * sampling_minutes(
                             grid, lora.sample_batch_size, lora.num_inference_steps),
                         "write to Drive, export (local disk)": write_minutes(written + sd15["fp16_gb"]),
                         f"draw {pictures} pictures": sampling_minutes(pictures, lora.sample_batch_size,
                                                                       lora.num_inference_steps)})


def saver_names(s) -> str:
    savers = [k for k in ("gradient_checkpointing", "step_in_backward", "use_8bit_adam", "cache_latents")
              if getattr(s, k)]
    return ", ".join([s.mixed_precision] + savers)


# ----------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("DREAMLAB_DREAMBOOTH_DATA",
                                 Path(__file__).resolve().parents[2] / "shared" / "data" / "dreambooth"))
    parser.add_argument("--photos", type=Path, help="photos whose 512 px PNGs stand in for the class images "
                        "(default: the DreamBooth photos beside the checkout, else the course's dog)",
                        default=shared if shared.is_dir() else ASSETS / "instance" / "dog")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["DREAMLAB_DEVICE"] = "cuda"  # gpu_settings() as on Colab's T4 (a CPU gets bf16 for fp16)

    # what lessons 2 to 5 get on a T4 (planned for COURSE_GIB), with the course's folder on Drive
    full = dataclasses.replace(colab.gpu_settings(), compact_checkpoints=True)
    lora = colab.gpu_settings(lora=True, lora_rank=8, learning_rate=1e-4)  # lesson 5, cell 2
    sd = memory.meta_model()
    params = {part: sum(p.numel() for p in getattr(sd, part).parameters())
              for part in ("unet", "vae", "text_encoder")}
    # SD 1.5's files (models.NEEDED_FILES): float32 safetensors, downloaded by each lesson (a fresh machine)
    sd15 = dict(download_gb=4 * sum(params.values()) / GB, fp16_gb=2 * sum(params.values()) / GB, vae=sd.vae)
    sd15["download_minutes"] = sd15["download_gb"] * GB / MB / HUB_MB_PER_S / 60
    png_mb, n_photos = png_megabytes(args.photos)

    print("== T4 rates")
    print(f"sampling, SD 1.5 fp16: {SAMPLING_IT_PER_S[1]} it/s at batch 1, {SAMPLING_IT_PER_S[4]} it/s at "
          f"batch 4 (an it: one denoising step of the batch, guidance included); source: {SAMPLING_SOURCE}")
    print(f"training, SD 1.5 UNet: {TRAIN_IT_PER_S} it/s at {TRAIN_PIXELS} px, 1 image a step; source: "
          f"{TRAIN_SOURCE}. Estimated from it: x {(512 / TRAIN_PIXELS) ** 2:.2f} at 512 px (pixel count), "
          f"x 2 with prior preservation (image count), x {CHECKPOINTING_SLOWER} with gradient checkpointing "
          "(memory.py's LADDER)")
    print("\n== Assumptions (no source)")
    print(f"assumed: hub downloads {HUB_MB_PER_S} MB/s; Drive and disk writes {DISK_MB_PER_S} MB/s; pip "
          f"install {PIP_MINUTES} min; loading a model {LOAD_MINUTES} min; lesson 3's step by hand "
          f"{HAND_STEP_MINUTES} min; a planner estimate {ESTIMATE_SECONDS} s")
    print("assumed: a LoRA step costs what a full fine-tune's step costs without gradient checkpointing "
          "(conservative: no gradients for the frozen weights, almost no optimizer step)")
    print(f"assumed: your photos on Drive {YOUR_PHOTOS_BYTES / MB:.0f} MB; CUDA context {CUDA_CONTEXT_GIB} "
          "GiB (memory.py: 0.3 to 0.5 GiB); allocator fragmentation (5 to 10 %) not counted")
    print(f"measured: a class image's PNG {png_mb:.3f} MB (measured on {n_photos} photos from {args.photos}, "
          "resized to 512 px: real photos standing in for SD's pictures)")
    print("not counted: the learner's reading time; VAE encodes and decodes and other single passes; Colab's "
          "start-up and Drive mount")

    drive, rows = Drive(), []
    lessons = [lambda: lesson_1(sd15, drive), lambda: lesson_2(sd15, drive, full, png_mb * MB / GB),
               lambda: lesson_3(sd15, drive, full), lambda: lesson_4(sd15, drive, full),
               lambda: lesson_5(sd15, drive, full, lora, png_mb * MB / GB)]
    for number, lesson in enumerate(lessons, 1):
        drive.new_lesson()
        work = lesson()
        rows.append(dict(number=number, gpu=max(work["gpu"].values()) + CUDA_CONTEXT_GIB, kept=drive.used,
                         peak=drive.peak, peak_with_bin=drive.peak_with_bin,
                         minutes=sum(work["minutes"].values()), work=work))

    print("\n== Per lesson on a T4 (est. = estimated, measured = measured on a T4)\n")
    print("| lesson | peak GPU memory (GiB) | Drive kept after (GB) | Drive peak during (GB) "
          "| Drive peak, bin included (GB) | T4 minutes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['number']} {LESSONS[r['number'] - 1]} | {r['gpu']:.1f} (est.) | {r['kept']:.2f} (est.) "
              f"| {r['peak']:.2f} (est.) | {r['peak_with_bin']:.2f} (est.) | {r['minutes']:.1f} (est.) |")
    most = max(rows, key=lambda r: r["gpu"])
    total_minutes = sum(r["minutes"] for r in rows)
    drive_peak = max(r["peak"] for r in rows)
    bin_peak = max(r["peak_with_bin"] for r in rows)
    print(f"| total | {most['gpu']:.1f} (est., the most) | {drive.used:.2f} (est., at the end) "
          f"| {drive_peak:.2f} (est., the most) | {bin_peak:.2f} (est., the most) "
          f"| {total_minutes:.1f} (est.) |")
    print(f"\nThe bin: files deleted in the last 30 days, still counted against Drive's 15 GB. {BIN_SOURCE}.")

    print("\n== What each figure is made of (GiB of GPU memory before the CUDA context; T4 minutes)")
    for r in rows:
        work = r["work"]
        print(f"lesson {r['number']}: local disk {work['local']:.1f} GB (est.)")
        for what, gib in work["gpu"].items():
            print(f"  GPU   {gib:5.2f} GiB  {what}")
        for what, minutes in work["minutes"].items():
            print(f"  time  {minutes:5.2f} min  {what}")
    folders = ", ".join(f"{name} {gb:.3f}" for name, gb in drive.folders().items())
    print(f"Drive at the end, GB (est.): {folders}; in the bin (30 days): {drive.bin:.2f}")

    print("\n== Targets")
    verdict = {True: "met", False: "NOT met"}
    print(f"every lesson under {COURSE_GIB:g} GiB: {verdict[most['gpu'] < COURSE_GIB]} (the most: lesson "
          f"{most['number']}, {most['gpu']:.1f} GiB est.)")
    print(f"Drive at most {DRIVE_PEAK_GB:g} GB at any moment: {verdict[drive_peak <= DRIVE_PEAK_GB]} "
          f"({drive_peak:.2f} GB est.); counting the bin: {verdict[bin_peak <= DRIVE_PEAK_GB]} "
          f"({bin_peak:.2f} GB est.)")
    print(f"Drive at most {DRIVE_END_GB:g} GB after the last lesson: {verdict[drive.used <= DRIVE_END_GB]} "
          f"({drive.used:.2f} GB est.); counting the bin: {verdict[drive.used + drive.bin <= DRIVE_END_GB]} "
          f"({drive.used + drive.bin:.2f} GB est.)")
    print(f"the whole course in at most {COURSE_MINUTES:g} T4 minutes: "
          f"{verdict[total_minutes <= COURSE_MINUTES]} ({total_minutes:.1f} min est.)")


if __name__ == "__main__":
    main()
