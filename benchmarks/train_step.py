"""Our DreamBooth training step against diffusers' train_dreambooth.py, side by side: CPU time, wall
time and peak memory per step, one JSON line per process, then a summary of the ratios.

    python benchmarks/train_step.py --diffusers-script build/train_dreambooth.py
    python benchmarks/train_step.py --diffusers-script build/train_dreambooth.py --no-cache --rounds 2
    python benchmarks/train_step.py --lora --diffusers-lora-script build/train_dreambooth_lora.py
    python benchmarks/train_step.py --breakdown          # ours only: where a step's time goes

On one thread of a 2-core machine a round takes about a minute (4 rounds of 15 steps: 5 minutes).

diffusers' scripts are not part of this repository; fetch them at the reference commit first,
from a clone of diffusers:
    mkdir -p build && git -C DIFFUSERS show 58eb52c0803ea9af3abec60841c2a093bdf1f951:\
examples/dreambooth/train_dreambooth.py > build/train_dreambooth.py
or from GitHub:
    mkdir -p build && curl -o build/train_dreambooth.py https://raw.githubusercontent.com/huggingface/diffusers/\
58eb52c0803ea9af3abec60841c2a093bdf1f951/examples/dreambooth/train_dreambooth.py
(and the same for train_dreambooth_lora.py, for --lora).

The set-up, made once per run in a temporary folder: the model ("small": SD 1.x's topology with
random weights, UNet 34M weights, VAE 3.9M, text encoder 7M; `--model` takes any diffusers
folder), and 4 class images of "a photo of a dog", drawn by dreamlab before any timing; diffusers
gets copies of them and of the course's dog photos (the image files only: its dataset opens every
file in its folders), so neither contender draws class images while timed.

The work timed is the same on both sides: 256 px, prior preservation (batch 1 photo + 1 class
image), float32, AdamW at 5e-6 with gradients clipped to norm 1, one thread. Ours runs with what
a user gets from dreamlab.Settings() (cached latents, plain optimizer step, fused AdamW, ...) but
for the flags given; diffusers' script with its defaults but for the same settings passed on its
command line (no latent caching: it has none). The rows say which flags were on.

Rounds are interleaved: each round runs each contender once, each in its own fresh process, the
order alternating, so a machine shared with other jobs slows both alike. In each process a step
is the time between the ends of two consecutive optimizer steps (data, forward, backward,
clipping, optimizer: everything): ours stamps from dreamlab.train's on_step, diffusers' from a
global post-hook on every optimizer's step (its code is not edited). After --warmup steps,
--steps steps are timed, then the process stops itself (before anything is saved). Per process:
  median_step_cpu_s   median CPU time of the process per step (on one thread: the work, whatever
                      else the machine does); median_step_wall_s the same in wall-clock time
  peak_rss_mib        the process's peak resident memory (getrusage), everything included as each
                      does it: imports, loading the model, set-up, the steps
  run_peak_rss_mib    the peak from the call of train() / main() on (Linux: the peak is reset
                      first), imports left out; steps_peak_rss_mib the peak over the timed steps
The summary's ratios are ours / diffusers' per round (the two ran back to back), their median and
range. Target (issue 16): a step in <= 0.6x diffusers' CPU time at <= 0.8x its peak RSS.

What still differs per step, each side's own way of working: ours by default encodes the photos
and prompts once (cached latents; --no-cache encodes them every step, as diffusers' does), keeps
the photos decoded and shrunk to the resolution in memory (diffusers' reads the 512 px JPEG from
disk and resizes it every step), steps a fused AdamW (diffusers' gets AdamW's default on a CPU,
one tensor at a time) and frees the gradients after the step (diffusers' zeroes them in place:
--set_grads_to_none is off by default).
diffusers' script needs torchvision only for its photo transforms, and torchvision does not
import beside this torch: benchmarks/torchvision_stand_in.py stands in for those transforms.
"""

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_COMMIT = "58eb52c0803ea9af3abec60841c2a093bdf1f951"
TARGET = {"step": 0.6, "rss": 0.8}  # ours / diffusers'
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-script", help="diffusers' examples/dreambooth/train_dreambooth.py")
    parser.add_argument("--diffusers-lora-script", help="its train_dreambooth_lora.py (for --lora)")
    parser.add_argument("--model", default="small", help='"small" (built here) or a diffusers folder')
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the timed ones")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cache", action="store_true", help="ours encodes pictures and prompts each step")
    parser.add_argument("--step-in-backward", action="store_true", help="ours steps in the backward pass")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--text-encoder", action="store_true", help="train the text encoder too")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead of the rounds: where our step's time goes (this process)")
    parser.add_argument("--prepare", help=argparse.SUPPRESS)  # a folder: make the set-up there
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a run's spec (JSON): this process is that run
    return parser.parse_args(argv)


# ---- memory of this process (Linux)

def vm_hwm_mib() -> float | None:
    """This process's peak resident memory since the last reset, in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak (VmHWM) to the current RSS


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- one contender in its own process (--child)

class Done(Exception):
    """Raised after the last timed step: the run stops there, before it saves anything."""


class Stamps:
    """Called at the end of every optimizer step: CPU and wall clock, and the memory figures. The
    peak is reset as the run starts and after the warm-up steps, so that its last reading is the
    timed steps' own. The reset lowers getrusage's peak too: it is read before each."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.last = warmup, warmup + steps
        self.cpu, self.wall, self.memory, self.process_peak = [], [], {}, 0.0

    def reset_peak(self) -> float | None:
        """The peak since the last reset; then a new start."""
        peak, self.process_peak = vm_hwm_mib(), max(self.process_peak, max_rss_mib())
        reset_peak_rss()
        return peak

    def __call__(self, *_):
        self.cpu.append(time.process_time())
        self.wall.append(time.perf_counter())
        if len(self.wall) == self.warmup:
            self.memory["run_peak_rss_mib"] = self.reset_peak()
        if len(self.wall) == self.last:
            steps_peak = vm_hwm_mib()
            run_peak = max(self.memory["run_peak_rss_mib"] or 0, steps_peak or 0)
            # (the two counters may differ by a page or so: the process's peak is the larger)
            self.memory.update(peak_rss_mib=max(self.process_peak, max_rss_mib(), run_peak),
                               run_peak_rss_mib=run_peak, steps_peak_rss_mib=steps_peak)
            raise Done

    def steps(self, clock: list[float]) -> list[float]:
        return [b - a for a, b in zip(clock[self.warmup - 1:], clock[self.warmup:])]


def run_dreamlab(spec: dict, stamps: Stamps) -> None:
    import dreamlab

    s = dreamlab.Settings(**spec["settings"])
    stamps.reset_peak()
    dreamlab.train(s, on_step=stamps, save=False)


def run_diffusers(spec: dict, stamps: Stamps) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torchvision_stand_in import import_script  # beside this file

    script = import_script(spec["script"])
    options = script.args = script.parse_args(spec["argv"])  # as its __main__ does (the LoRA one reads it)
    register_optimizer_step_post_hook(stamps)  # whichever optimizer it makes
    stamps.reset_peak()
    script.main(options)


def child(spec_file: str) -> None:
    import torch

    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(spec["threads"])
    stamps = Stamps(spec["warmup"], spec["steps"])
    with contextlib.suppress(Done):
        (run_dreamlab if spec["contender"] == "dreamlab" else run_diffusers)(spec, stamps)
    if not stamps.memory.get("peak_rss_mib"):
        sys.exit(f"{spec['contender']} stopped after {len(stamps.wall)} steps, not {stamps.last}")
    cpu, wall = stamps.steps(stamps.cpu), stamps.steps(stamps.wall)
    result = {"median_step_cpu_s": statistics.median(cpu), "median_step_wall_s": statistics.median(wall),
              **stamps.memory, "timed_steps": len(wall), "torch_threads": torch.get_num_threads()}
    Path(spec["result"]).write_text(json.dumps(result))


# ---- the set-up (--prepare, in a process of its own)

def our_settings(args, work: Path, max_train_steps: int) -> dict:
    """What the benchmark must set; every other choice is Settings()' default."""
    options = dict(model=str(work / "model"), class_dir=str(work / "class-dreamlab"),
                   output_dir=str(work / "out-dreamlab"), device="cpu", resolution=args.resolution,
                   max_train_steps=max_train_steps, num_class_images=4)
    flags = {"cache_latents": False if args.no_cache else None,
             "step_in_backward": True if args.step_in_backward else None,
             "lora": args.lora or None, "train_text_encoder": args.text_encoder or None,
             "gradient_checkpointing": args.gradient_checkpointing or None}
    return {**options, **{k: v for k, v in flags.items() if v is not None}}


def configuration(args, s) -> dict:
    """What the rows say was on (`s`: our Settings); diffusers' script has no cached latents and
    no optimizer step in the backward pass."""
    return {"model": args.model, "resolution": s.resolution, "lora": s.lora,
            "text_encoder": s.train_text_encoder, "gradient_checkpointing": s.gradient_checkpointing,
            "threads": args.threads, "cache_latents": s.cache_latents, "step_in_backward": s.step_in_backward}


def diffusers_argv(s, work: Path, max_train_steps: int) -> list[str]:
    """diffusers' command line for the same work as ours (`s`: our Settings)."""
    argv = ["--pretrained_model_name_or_path", s.model, "--instance_data_dir", str(work / "photos-diffusers"),
            "--instance_prompt", s.instance_prompt, "--with_prior_preservation",
            "--class_data_dir", str(work / "class-diffusers"), "--class_prompt", s.class_prompt,
            "--prior_loss_weight", str(s.prior_loss_weight), "--num_class_images", str(s.num_class_images),
            "--resolution", str(s.resolution), "--train_batch_size", str(s.train_batch_size),
            "--learning_rate", str(s.learning_rate), "--adam_weight_decay", str(s.adam_weight_decay),
            "--max_grad_norm", str(s.max_grad_norm), "--lr_scheduler", s.lr_scheduler,
            "--max_train_steps", str(max_train_steps), "--checkpointing_steps", str(max_train_steps + 1),
            "--mixed_precision", s.mixed_precision, "--seed", str(s.seed),
            "--output_dir", str(work / "out-diffusers")]
    if s.lora:
        argv += ["--rank", str(s.lora_rank)]
    if s.train_text_encoder:
        argv += ["--train_text_encoder"]
    if s.gradient_checkpointing:
        argv += ["--gradient_checkpointing"]
    return argv


def prepare(args, work: Path) -> None:
    """The model, the class images (drawn by dreamlab, copied for diffusers), diffusers' photos, and
    each contender's settings (specs.json)."""
    import torch

    import dreamlab
    from dreamlab.offline import build_random_model

    torch.set_num_threads(args.threads)
    max_steps = args.warmup + args.steps + 1  # one more than run: neither finishes on its own
    ours = our_settings(args, work, max_steps)
    s = dreamlab.Settings(**ours)
    if args.model == "small":
        build_random_model(work / "model", size="small")
    else:
        (work / "model").symlink_to(Path(args.model).resolve())
    sd = dreamlab.load_model(s.model)
    dreamlab.generate_class_images(sd.pipeline(), s.class_dir, s.class_prompt, s.num_class_images,
                                   batch_size=4, resolution=s.resolution, num_inference_steps=2,
                                   seed=s.seed, model=s.model)
    del sd
    for source, copy in ((s.class_dir, "class-diffusers"), (s.instance_dir, "photos-diffusers")):
        (work / copy).mkdir()
        for f in Path(source).iterdir():
            if f.suffix.lower() in IMAGE_SUFFIXES:
                shutil.copy(f, work / copy / f.name)
    script = args.diffusers_lora_script if args.lora else args.diffusers_script
    specs = {"config": configuration(args, s), "dreamlab": {"settings": ours},
             "diffusers": {"script": script and str(Path(script).resolve()),
                           "argv": diffusers_argv(s, work, max_steps),
                           "config": {"cache_latents": False, "step_in_backward": False}}}
    (work / "specs.json").write_text(json.dumps(specs))


# ---- the rounds (this process: kept small, for a child's getrusage peak starts at the size of
# the process that started it, which exec() passes on)

def run_process(argv: list[str], log: Path, threads: int) -> None:
    """This file in a fresh process, with `argv`; on failure this process stops with its log's end."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, __file__, *argv], stdout=out, stderr=subprocess.STDOUT,
                              env=env)
    if done.returncode:
        sys.exit(f"{' '.join(argv)} failed; its output ends:\n" + log.read_text()[-4000:])


def run_child(contender: str, args, work: Path, spec: dict) -> dict:
    """One contender in a fresh process; what it measured."""
    run = work / f"{contender}-{len(list(work.glob(f'{contender}-*.json')))}"
    spec = {**spec, "contender": contender, "warmup": args.warmup, "steps": args.steps,
            "threads": args.threads, "result": str(run.with_suffix(".result"))}
    run.with_suffix(".json").write_text(json.dumps(spec))
    run_process(["--child", str(run.with_suffix(".json"))], run.with_suffix(".log"), args.threads)
    return json.loads(run.with_suffix(".result").read_text())


def rounds(args, work: Path) -> list[dict]:
    specs = json.loads((work / "specs.json").read_text())
    rows = []
    for r in range(args.rounds):
        for position, contender in enumerate(["dreamlab", "diffusers"][::1 if r % 2 == 0 else -1]):
            start = time.perf_counter()
            result = run_child(contender, args, work, specs[contender])
            config = {**specs["config"], **specs[contender].get("config", {})}
            rows.append({"round": r, "contender": contender, "order": position, **config,
                         **{k: round(v, 3) if k.endswith("_s") else round(v) for k, v in result.items()},
                         "process_s": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(args, work: Path, rows: list[dict]) -> dict:
    by = {(row["round"], row["contender"]): row for row in rows}

    def ratios(key: str) -> dict:
        each = [by[r, "dreamlab"][key] / by[r, "diffusers"][key] for r in range(args.rounds)]
        return {"median": round(statistics.median(each), 3),
                "range": [round(min(each), 3), round(max(each), 3)], "per_round": [round(x, 3) for x in each]}

    def median(contender: str, key: str) -> float:
        value = statistics.median(row[key] for row in rows if row["contender"] == contender)
        return round(value) if key.endswith("_mib") else round(value, 3)

    keys = ("median_step_cpu_s", "median_step_wall_s", "peak_rss_mib", "run_peak_rss_mib",
            "steps_peak_rss_mib")
    out = {"measure": "summary", **json.loads((work / "specs.json").read_text())["config"],
           "rounds": args.rounds, "timed_steps": args.steps, "warmup": args.warmup,
           "diffusers_script": Path(args.diffusers_lora_script if args.lora else args.diffusers_script).name,
           "diffusers_commit": REFERENCE_COMMIT,
           "dreamlab": {k: median("dreamlab", k) for k in keys},
           "diffusers": {k: median("diffusers", k) for k in keys},
           "ours_over_theirs": {k: ratios(k) for k in keys}}
    step, wall, rss = (out["ours_over_theirs"][k]["median"]
                       for k in ("median_step_cpu_s", "median_step_wall_s", "peak_rss_mib"))
    out["target"] = {"step_cpu_time": TARGET["step"], "peak_rss": TARGET["rss"],
                     "step_cpu_met": step <= TARGET["step"], "step_wall_met": wall <= TARGET["step"],
                     "peak_rss_met": rss <= TARGET["rss"],
                     "met": step <= TARGET["step"] and rss <= TARGET["rss"]}
    return out


# ---- --breakdown: where our step's time goes

class Clock:
    """CPU time per named part; a part inside another counts only to the inner one."""

    def __init__(self):
        self.spent, self.open = {}, []

    def start(self, name: str) -> None:
        self.open.append([name, time.process_time(), 0.0])

    def stop(self) -> None:
        name, started, inner = self.open.pop()
        took = time.process_time() - started
        self.spent[name] = self.spent.get(name, 0.0) + took - inner
        if self.open:
            self.open[-1][2] += took

    @contextlib.contextmanager
    def part(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop()


def timed(clock: Clock, name: str, function):
    @functools.wraps(function)  # (its marks too: the lr scheduler checks that it wraps the step)
    def timed_function(*a, **kw):
        with clock.part(name):
            return function(*a, **kw)
    return timed_function


def timed_batches(clock: Clock, stream):
    while True:
        with clock.part("data"):
            batch = next(stream)
        yield batch


def breakdown(args, work: Path) -> dict:
    """Our optimizer steps as dreamlab.train takes them (its set_up and optimizer_step), with
    clocks around the pieces: the batches, the UNet's forward pass, the backward pass, gradient
    clipping and the optimizer's own step; the rest is noise, text, loss, zero_grad, lr schedule.
    With --step-in-backward the optimizer steps and clipping happen inside the backward pass and
    are counted on their own."""
    import torch
    from accelerate.utils import set_seed

    import dreamlab
    from dreamlab.train import batches, make_accelerator, optimizer_step, set_up

    torch.set_num_threads(args.threads)
    s = dreamlab.Settings(**our_settings(args, work, args.warmup + args.steps))
    accelerator = make_accelerator(s)
    set_seed(s.seed)
    t = set_up(s, dreamlab.load_model(s.model, device=accelerator.device), accelerator)
    clock = Clock()
    t.sd.unet.register_forward_pre_hook(lambda *_: clock.start("unet forward"))
    t.sd.unet.register_forward_hook(lambda *_: clock.stop())
    optimizer = getattr(t.optimizer, "optimizer", t.optimizer)  # inside accelerate's wrapper
    optimizer.step = timed(clock, "optimizer step", optimizer.step)
    accelerator.backward = timed(clock, "backward", accelerator.backward)
    torch.nn.utils.clip_grad_norm_ = timed(clock, "gradient clipping", torch.nn.utils.clip_grad_norm_)
    stream = timed_batches(clock, batches(t.loader, t.sampler, s.seed))
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            clock.spent, start = {}, time.perf_counter()
        with clock.part("rest"):
            optimizer_step(s, t, stream, step)
    wall = (time.perf_counter() - start) / args.steps
    total = sum(clock.spent.values())
    return {"measure": "breakdown", **configuration(args, s), "timed_steps": args.steps,
            "step_cpu_s": round(total / args.steps, 3), "step_wall_s": round(wall, 3),
            "cpu_s_per_step": {k: round(v / args.steps, 4) for k, v in clock.spent.items()},
            "share": {k: round(v / total, 3) for k, v in clock.spent.items()}}


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args.child)
    if args.prepare:
        return prepare(args, Path(args.prepare))
    script = args.diffusers_lora_script if args.lora else args.diffusers_script
    if not args.breakdown and not (script and Path(script).is_file()):
        sys.exit(f"diffusers' {'train_dreambooth_lora.py' if args.lora else 'train_dreambooth.py'} is "
                 f"needed (--diffusers{'-lora' if args.lora else ''}-script); how to fetch it: this file's "
                 "docstring (python benchmarks/train_step.py --help shows its first line)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_process([*sys.argv[1:], "--prepare", str(work)], work / "prepare.log", args.threads)
        if args.breakdown:
            print(json.dumps(breakdown(args, work)))
        else:
            print(json.dumps(summary(args, work, rounds(args, work))))


if __name__ == "__main__":
    main()
