"""Seconds per class image, dreamlab against diffusers' train_dreambooth.py, and what the sampler
choice costs in picture quality, by the toy judge. One JSON line per configuration, then a summary.

    python benchmarks/class_images.py --diffusers-script build/train_dreambooth.py
    python benchmarks/class_images.py        # without diffusers' script: its pipeline call only

diffusers' script is not part of this repository; fetch it first, e.g.
    mkdir -p build && curl -o build/train_dreambooth.py https://raw.githubusercontent.com/huggingface/diffusers/\
58eb52c0803ea9af3abec60841c2a093bdf1f951/examples/dreambooth/train_dreambooth.py

Speed. Per model ("small": SD's topology with random weights, 256 px; "toy": the toy model, 64
px), each contender draws --images class images of "a photo of a ball" into an empty folder, from
the model's folder on disk (loading included), on the CPU, in batches of --batch, in float32:
  dreamlab          load_model + generate_class_images: DPM-Solver++ (multistep), 25 steps, PNG
  diffusers-script  the script's main() with --with_prior_preservation and its defaults
                    (--sample_batch_size set to --batch), stopped as it starts to load the
                    tokenizer for training, right after its class images (needs --diffusers-script)
  diffusers-call    the pipeline call the script makes, re-created: DiffusionPipeline.from_pretrained
                    in float32 (its --prior_generation_precision default on a CPU), then
                    pipeline(prompts) with its defaults: the model's own scheduler (PNDM, as SD's),
                    50 steps, guidance 7.5, the UNet's own size; JPEG files named by SHA-1, as it does
Rounds are interleaved (each round runs every contender once, in turn, the order rotating), so a
machine shared with other jobs slows them alike. `s_per_image` is wall-clock time, the whole phase
(loading included); `cpu_s_per_image` the CPU time this process spent (on one thread, what the
work costs, without the time spent waiting for other jobs); `drawing_s_per_image` leaves out
loading the model; medians over rounds, each round's figure in `per_round`. The summary's ratios
are medians of each round's ratio (ours over theirs), with their range. The script runs in this
process, imported as a module, with benchmarks/torchvision_stand_in.py for torchvision (which does
not import here): only its training data pipeline uses it.

Quality. The toy model draws --quality-images pictures of "a photo of a ball" per sampler, seeds
0, 1, ... (the same starting noise for every sampler), and the judge says what each shows:
  dreamlab          DPM-Solver++ 25 steps (generate_class_images, read back from its PNG files)
  diffusers         PNDM 50 steps: the script's pipeline call, given the same seeds
  controls          DPM-Solver++ 10 steps, to show that the measures see a loss; PNDM 25 steps,
                    diffusers' sampler at our step count (is it the sampler or the steps?)
Every sampler follows, in a few steps, the same equation (the sampling ODE) from the same noise;
with SD's "leading" timestep spacing each starts it at its own timestep (`first_timestep`). The
picture it tends to with ever more steps ("converged": DPM-Solver++ on --reference-steps
timesteps from the same start) is its error-free version; `reference_rms_at_half_steps` says how
near that reference is to convergence itself.
Measures: the share judged to show a ball (the class prompt's shape), the share judged to be the
DreamBooth subject (the drift baseline), the colours' and contexts' shares (variety); and, seed by
seed, whether the judge gives the same four answers (shape, colour, pattern, context) as for the
converged picture, and how far the picture lies from it (RMS over pixels, 0-255). The judge sees
64 px pictures through four questions: finer flaws (blur, noise, edges) show only in the distance.
"""

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--diffusers-script", default=None,
                    help="path to diffusers' examples/dreambooth/train_dreambooth.py")
parser.add_argument("--models", nargs="+", default=["small", "toy"], choices=["small", "toy"])
parser.add_argument("--images", type=int, default=8, help="class images per contender and round")
parser.add_argument("--batch", type=int, default=4, help="diffusers' --sample_batch_size default")
parser.add_argument("--rounds", type=int, default=3, help="0: no speed measures")
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--quality-images", type=int, default=64, help="0: no quality measures")
parser.add_argument("--reference-steps", type=int, default=200)
args = parser.parse_args()
torch.set_num_threads(args.threads)
warnings.filterwarnings("ignore", category=FutureWarning)  # torch_dtype, as diffusers' script passes it

from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, PNDMScheduler  # noqa: E402
from torchvision_stand_in import import_script  # noqa: E402  (beside this file)

import dreamlab  # noqa: E402  (after set_num_threads)
from dreamlab.judge import load_judge  # noqa: E402
from dreamlab.offline import build_random_model  # noqa: E402

PROMPT = "a photo of a ball"
STEPS = 25  # dreamlab's default (Settings.num_inference_steps)


def resolution(model: str) -> int:
    """What diffusers' pipeline draws by default: the UNet's sample size times the VAE's scale."""
    unet = json.loads((Path(model) / "unet" / "config.json").read_text())
    vae = json.loads((Path(model) / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def dreamlab_side(model: str, folder: Path, n: int) -> float:
    """Draw n class images as dreamlab does; returns the seconds spent loading the model."""
    start = time.perf_counter()
    sd = dreamlab.load_model(model)
    loaded = time.perf_counter() - start
    dreamlab.generate_class_images(sd.pipeline(), folder, PROMPT, n, batch_size=args.batch,
                                   resolution=resolution(model), num_inference_steps=STEPS)
    return loaded


def load_pipeline(model: str):
    """The script's pipeline: float32 on a CPU, no safety checker, its model's own scheduler."""
    pipeline = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def diffusers_call(model: str, folder: Path, n: int) -> float:
    """The pipeline call of the script's class-image loop, re-created with its defaults."""
    start = time.perf_counter()
    pipeline = load_pipeline(model)
    loaded = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    for first in range(0, n, args.batch):
        for i, image in enumerate(pipeline([PROMPT] * min(args.batch, n - first)).images):
            image.save(folder / f"{first + i}-{hashlib.sha1(image.tobytes()).hexdigest()}.jpg")
    return loaded


class ClassImagesDone(Exception):
    """Raised where the script goes on to load the tokenizer for training."""


def diffusers_script(script, model: str, folder: Path, n: int, tmp: Path) -> float:
    """The script's own main(), stopped right after its class images."""
    times = {}

    def from_pretrained(*a, **kw):  # the script's call, timed
        start = time.perf_counter()
        pipeline = DiffusionPipeline.from_pretrained(*a, **kw)
        times["load"] = time.perf_counter() - start
        return pipeline

    def tokenizer(*a, **kw):
        raise ClassImagesDone

    script.DiffusionPipeline = types.SimpleNamespace(from_pretrained=from_pretrained)
    script.AutoTokenizer = types.SimpleNamespace(from_pretrained=tokenizer)
    options = script.parse_args([
        "--pretrained_model_name_or_path", model, "--instance_data_dir", str(tmp / "unused"),
        "--instance_prompt", "a photo of sks ball", "--with_prior_preservation",
        "--class_data_dir", str(folder), "--class_prompt", PROMPT, "--num_class_images", str(n),
        "--sample_batch_size", str(args.batch), "--output_dir", str(tmp / "diffusers-out")])
    with contextlib.suppress(ClassImagesDone):
        script.main(options)
    for library in ("diffusers", "transformers"):  # main() turned their logging up
        sys.modules[library].utils.logging.set_verbosity_warning()
    return times["load"]


def timing(tmp: Path, models: dict[str, str]) -> list[dict]:
    script = import_script(args.diffusers_script) if args.diffusers_script else None
    contenders = {"dreamlab": dreamlab_side, "diffusers-call": diffusers_call}
    if script:
        contenders["diffusers-script"] = lambda m, f, n: diffusers_script(script, m, f, n, tmp)
    names = list(contenders)
    for model in models.values():  # the first pass at each size is slower (kernels chosen): not timed
        pipeline = dreamlab.load_model(model).pipeline()
        dreamlab.generate(pipeline, [PROMPT] * args.batch, list(range(args.batch)), resolution(model),
                          num_inference_steps=1, batch_size=args.batch)
    runs = {(m, c): [] for m in models for c in names}
    for r in range(args.rounds):
        for name, model in models.items():
            for c in names[r % len(names):] + names[:r % len(names)]:  # the order rotates
                folder = tmp / f"class-{name}-{c}-{r}"
                wall, cpu = time.perf_counter(), time.process_time()
                load = contenders[c](model, folder, args.images)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                drawn = [p for p in folder.iterdir() if p.suffix in (".png", ".jpg")]
                assert len(drawn) == args.images, f"{c} drew {len(drawn)} images, not {args.images}"
                runs[name, c].append({"wall": wall / args.images, "cpu": cpu / args.images,
                                      "drawing": (wall - load) / args.images})
    rows = []
    for (name, c), times in runs.items():
        per_round = {k: [round(t[k], 3) for t in times] for k in ("wall", "cpu")}
        rows.append({"measure": "speed", "model": name, "contender": c,
                     "resolution": resolution(models[name]), "images": args.images, "batch": args.batch,
                     "rounds": args.rounds, "threads": args.threads,
                     "s_per_image": statistics.median(per_round["wall"]),
                     "cpu_s_per_image": statistics.median(per_round["cpu"]),
                     "drawing_s_per_image": round(statistics.median(t["drawing"] for t in times), 3),
                     "per_round": per_round})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def start(scheduler, steps: int) -> int:
    """The first timestep a sampler visits: with SD's "leading" spacing it depends on the sampler
    and its steps (DPM-Solver++: 951 at 25 steps; PNDM: 981 at 50)."""
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    return int(scheduler.timesteps[0])


def draw(pipeline, scheduler, seeds: list[int], **how) -> list:
    """One picture per seed (the seed gives the starting noise), in batches of 16."""
    pipeline.scheduler = scheduler
    images = []
    for i in range(0, len(seeds), 16):
        images += pipeline([PROMPT] * len(seeds[i:i + 16]), height=64, width=64, guidance_scale=7.5,
                           generator=[torch.Generator().manual_seed(s) for s in seeds[i:i + 16]],
                           **how).images
    return images


def converged(pipeline, dpm, first: int, steps: int, seeds: list[int]) -> list:
    """What a sampler starting at timestep `first` tends to with ever more steps: DPM-Solver++ on
    `steps` timesteps evenly spaced from `first` to 1 (and then to the clean picture)."""
    timesteps = sorted({int(t) for t in np.linspace(first, 1, steps).round()}, reverse=True)
    return draw(pipeline, dpm, seeds, timesteps=timesteps)


def shares(labels: list[str]) -> dict[str, float]:
    return {k: round(v / len(labels), 3) for k, v in sorted(Counter(labels).items())}


def rms(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def quality(tmp: Path, toy: str) -> list[dict]:
    n = args.quality_images
    seeds = list(range(n))  # generate_class_images' seeds at seed=0: each image's number
    files = dreamlab.generate_class_images(dreamlab.load_model(toy).pipeline(), tmp / "quality", PROMPT, n,
                                           batch_size=16, resolution=64, num_inference_steps=STEPS)
    pipeline = load_pipeline(toy)  # the script's, with the model's own scheduler
    pndm, dpm = pipeline.scheduler, DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    assert isinstance(pndm, PNDMScheduler), type(pndm)
    samplers = {  # name: (scheduler, steps, pictures)
        "dreamlab": (dpm, STEPS, [dreamlab.data.open_image(p) for p in files]),
        # the script's pipeline(prompts): its defaults (50 steps), given the same seeds
        "diffusers": (pndm, 50, draw(pipeline, pndm, seeds)),
        "control DPM-Solver++ 10 steps": (dpm, 10, draw(pipeline, dpm, seeds, num_inference_steps=10)),
        "control PNDM 25 steps": (pndm, 25, draw(pipeline, pndm, seeds, num_inference_steps=25))}
    firsts = {name: start(scheduler, steps) for name, (scheduler, steps, _) in samplers.items()}
    exact = {t: converged(pipeline, dpm, t, args.reference_steps, seeds) for t in set(firsts.values())}
    # how near the reference itself is to convergence: the same at half its steps
    half = converged(pipeline, dpm, firsts["dreamlab"], args.reference_steps // 2, seeds)
    reference_error = statistics.mean(rms(a, b) for a, b in zip(half, exact[firsts["dreamlab"]]))

    judge = load_judge()
    questions = ("shape", "colour", "pattern", "context")
    rows = []
    for name, (scheduler, steps, images) in samplers.items():
        said, said_exact = judge.predict(images), judge.predict(exact[firsts[name]])
        same = [all(a[q] == b[q] for q in questions) for a, b in zip(said, said_exact)]
        rows.append({"measure": "quality", "pictures": name, "sampler": type(scheduler).__name__,
                     "steps": steps, "first_timestep": firsts[name], "images": n,
                     "ball": round(sum(a["shape"] == "ball" for a in said) / n, 3),
                     "subject": round(sum(a["is_subject"] for a in said) / n, 3),
                     "colours": shares([a["colour"] for a in said]),
                     "contexts": shares([a["context"] for a in said]),
                     "same_answers_as_converged": round(sum(same) / n, 3),
                     "rms_to_converged": round(statistics.mean(map(rms, images, exact[firsts[name]])), 2),
                     "reference_steps": args.reference_steps,
                     "reference_rms_at_half_steps": round(reference_error, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(speed: list[dict], judged: list[dict]) -> dict:
    out = {"measure": "summary", "diffusers_script": args.diffusers_script}
    by = {(r["model"], r["contender"]): r for r in speed}
    for name in args.models if speed else []:
        theirs = by.get((name, "diffusers-script")) or by[name, "diffusers-call"]
        ours = by[name, "dreamlab"]
        # each round's ratio: the two ran one after the other, under the same load from other jobs
        ratios = {k: [a / b for a, b in zip(ours["per_round"][k], theirs["per_round"][k])]
                  for k in ("cpu", "wall")}
        out[name] = {"vs": theirs["contender"], "dreamlab_cpu_s_per_image": ours["cpu_s_per_image"],
                     "diffusers_cpu_s_per_image": theirs["cpu_s_per_image"],
                     "cpu_time_ratio": round(statistics.median(ratios["cpu"]), 3),
                     "cpu_time_ratio_spread": [round(min(ratios["cpu"]), 3), round(max(ratios["cpu"]), 3)],
                     "wall_time_ratio": round(statistics.median(ratios["wall"]), 3),
                     "wall_time_ratio_spread": [round(min(ratios["wall"]), 3), round(max(ratios["wall"]), 3)],
                     "unet_passes_ratio": round(STEPS / 51, 3),  # PNDM's 50 steps take 51 passes
                     "target_met": statistics.median(ratios["cpu"]) <= 0.5}
    if judged:
        q = {r["pictures"]: r for r in judged}
        ours, theirs = q["dreamlab"], q["diffusers"]
        # Two questions. Do the class images say the same of the class? The shares of balls and of
        # subjects within 0.05, of each colour and context within 0.1 (a share of 64 pictures has a
        # standard error of 0.04 near 0.9, 0.06 near 0.3). And is each picture as accurate? The
        # judge's answers as often those of its converged picture, within 0.05. (The RMS distance
        # is reported, not judged.)
        gaps = [abs(ours[k].get(label, 0) - theirs[k].get(label, 0))
                for k in ("colours", "contexts") for label in {*ours[k], *theirs[k]}]
        out["quality"] = {
            "dreamlab_vs_diffusers": {k: [ours[k], theirs[k]] for k in
                                      ("ball", "subject", "same_answers_as_converged", "rms_to_converged")},
            "largest_colour_or_context_gap": round(max(gaps), 3),
            "same_class_statistics": abs(ours["ball"] - theirs["ball"]) <= 0.05
            and abs(ours["subject"] - theirs["subject"]) <= 0.05 and max(gaps) <= 0.1,
            "as_accurate_seed_by_seed":
                ours["same_answers_as_converged"] >= theirs["same_answers_as_converged"] - 0.05}
    if not args.diffusers_script:
        out["note"] = ("diffusers' script not given (--diffusers-script): compared with its pipeline "
                       "call only; see this script's docstring to fetch it")
    return out


if not args.diffusers_script:
    print("diffusers' train_dreambooth.py not given: timing its pipeline call only (diffusers-call). "
          "Pass --diffusers-script PATH to run the script itself; how to fetch it: see "
          "benchmarks/class_images.py's docstring.", file=sys.stderr)
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    models = {}
    if "small" in args.models:
        models["small"] = str(build_random_model(tmp / "small-sd", size="small"))
    if "toy" in args.models:
        models["toy"] = dreamlab.offline_model()
    speed = timing(tmp, models) if args.rounds else []
    judged = quality(tmp, dreamlab.offline_model()) if args.quality_images else []
    print(json.dumps(summary(speed, judged)))
