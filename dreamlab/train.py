"""DreamBooth fine-tuning: `training_step()` computes one loss; `train()` is the loop around it.

Lesson 3 runs training_step by hand, then calls train(); the command line calls train() too.
"""

import contextlib
import gc
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr, offload_models
from tqdm.auto import tqdm

from . import checkpoints, preflight
from .cache import cache_dataset
from .class_images import generate_class_images
from .data import collate, set_epoch, subjects_dataset
from .errors import DreamlabError
from .models import StableDiffusion, load_model
from .optimizer import StepInBackward, make_optimizer
from .runs import checkpoint_dir, resume, samples_dir, save_model
from .sample import generate, image_grid
from .settings import Settings
from .trainable import make_trainable, place


def training_step(sd: StableDiffusion, batch: dict, prior_loss_weight: float = 1.0,
                  generator: torch.Generator | None = None, offset_noise: float = 0.0,
                  min_snr_gamma: float = 0.0) -> tuple[torch.Tensor, dict]:
    """One DreamBooth loss: noise the images' latents, ask the UNet to predict that noise.

    `batch` is what data.collate makes: pixel_values (B, 3, H, W) in [-1, 1] (or latent_moments,
    when latents are cached), input_ids (B, 77) (or text_embeddings, when cached), and
    num_instance: how many of the B rows are instance images (the rest are class images, used
    for the prior-preservation loss). Returns the loss to backpropagate and a dict of plain
    floats for the history.
    """
    unet = sd.unet  # may be wrapped by accelerate (several GPUs): ask its weights, not it
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    with torch.no_grad():  # the VAE and (unless trained) the text encoder stay frozen
        if "latent_moments" in batch:  # cached: the VAE's output for these pictures
            dist = DiagonalGaussianDistribution(batch["latent_moments"].to(device))
        else:  # (B, 3, H, W) -> (B, 4, H/8, W/8)
            dist = sd.vae.encode(batch["pixel_values"].to(device, sd.vae.dtype)).latent_dist
        # scaling_factor brings the latents to unit variance
        latents = (dist.sample(generator) * sd.vae.config.scaling_factor).to(dtype)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=dtype)
    if offset_noise:  # also shift each channel's mean: the model learns to change overall brightness
        noise += offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=generator,
                                            device=device, dtype=dtype)
    timesteps = torch.randint(0, sd.noise_scheduler.config.num_train_timesteps,
                              (latents.shape[0],), generator=generator, device=device)
    noisy_latents = sd.noise_scheduler.add_noise(latents, noise, timesteps)
    if "text_embeddings" in batch:
        text = batch["text_embeddings"].to(device)
    else:
        with torch.set_grad_enabled(sd.text_encoder.training and torch.is_grad_enabled()):
            text = sd.text_encoder(batch["input_ids"].to(device))[0]  # (B, 77, hidden)
    prediction = unet(noisy_latents, timesteps, text.to(dtype)).sample

    # What the UNet should predict: the noise itself (SD 1.x) or the "velocity" (SD 2.x at 768 px)
    v_prediction = sd.noise_scheduler.config.prediction_type == "v_prediction"
    target = sd.noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:  # Min-SNR: nearly clean timesteps are easy and would dominate; cap their weight
        snr = compute_snr(sd.noise_scheduler, timesteps)
        per_image = per_image * snr.clamp(max=min_snr_gamma) / (snr + 1 if v_prediction else snr)
    n = batch.get("num_instance", len(latents))
    loss = per_image[:n].mean()
    logs = {"instance_loss": loss.item()}
    if n < len(latents):  # prior preservation: the class images' loss keeps the class intact
        prior_loss = per_image[n:].mean()
        loss = loss + prior_loss_weight * prior_loss
        logs["prior_loss"] = prior_loss.item()
    logs["loss"] = loss.item()
    return loss, logs


@dataclass
class TrainResult:
    sd: StableDiffusion  # the fine-tuned model, ready for sampling
    history: list[dict] = field(default_factory=list)  # one dict of losses per step
    output_dir: Path | None = None  # where the model was saved
    stopped_early: bool = False  # interrupted (kernel stop button, Ctrl-C)
    checkpoint: Path | None = None  # the last checkpoint written
    step: int = 0  # the steps trained, of max_train_steps
    settings: Settings | None = None  # the run's settings (compare.py lays runs side by side)
    usage: dict = field(default_factory=dict)  # what it cost: usage() below
    samples: list | None = None  # the latest validation samples (the model card shows them)


def prepare_class_images(s: Settings, sd: StableDiffusion, accelerator: Accelerator) -> None:
    """Generate the missing class images of each subject (on the main process only)."""
    if accelerator.is_main_process:
        # Under fp16/bf16 the frozen parts are already in half precision and the UNet in
        # float32: autocast lets them work together, as in training.
        with accelerator.autocast():
            for subject in s.subjects():
                generate_class_images(sd.pipeline(), subject.class_dir, subject.class_prompt,
                                      s.num_class_images, batch_size=s.sample_batch_size,
                                      resolution=s.resolution, num_inference_steps=s.num_inference_steps,
                                      guidance_scale=s.guidance_scale, seed=s.seed, model=s.model)
    accelerator.wait_for_everyone()


def parameter_groups(s: Settings, trained: dict) -> list[dict]:
    """The UNet's weights at learning_rate, the text encoder's at text_encoder_lr (or, when
    only the identifier learns, its word table at identifier_lr, without weight decay, which
    would shrink every other word too)."""
    options = {"unet": {"lr": s.learning_rate},
               "text_encoder": {"lr": s.identifier_lr, "weight_decay": 0.0} if s.train_identifier
               else {"lr": s.text_encoder_lr or s.learning_rate}}
    groups = [{"params": [p for n, p in trained.items() if n.startswith(part + ".")], **part_options}
              for part, part_options in options.items()]
    return [g for g in groups if g["params"]]


def batches(loader, sampler, seed: int, start: int = 0):
    """Batches without end, starting at batch number `start`. Each pass is shuffled by its own
    seed, so the order depends only on (seed, pass): a resumed run sees the same batches."""
    epoch, skip = divmod(start, len(loader))
    while True:
        sampler.generator.manual_seed(seed * 1_000_003 + epoch)
        set_epoch(loader.dataset, epoch)
        for i, batch in enumerate(loader):  # (skipped batches are still read: at most one pass)
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


@contextlib.contextmanager
def stop_on_interrupt():
    """The kernel's stop button (SIGINT) sets a flag: the loop ends after the current step, with a
    checkpoint, instead of being cut in the middle. A second press interrupts at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        print("\nstopping after this step (interrupt again to stop at once)...", flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def unwrapped(sd: StableDiffusion, accelerator: Accelerator) -> StableDiffusion:
    return replace(sd, unet=accelerator.unwrap_model(sd.unet),
                   text_encoder=accelerator.unwrap_model(sd.text_encoder))


def sample_now(s: Settings, sd: StableDiffusion, accelerator: Accelerator, step: int, on_sample):
    """Draw the validation prompts with the same seeds as every time, save the grid, call back."""
    model = unwrapped(sd, accelerator)
    device = model.unet.device
    away = [m for m in (model.vae, model.text_encoder) if m.device != device]  # (cached latents)
    was_training = model.unet.training, model.text_encoder.training
    model.unet.eval(), model.text_encoder.eval()
    prompts = [p for p in s.validation_prompts for _ in range(s.num_validation_images)]
    seeds = list(range(s.num_validation_images)) * len(s.validation_prompts)
    with offload_models(*away, device=device, offload=bool(away)), accelerator.autocast():
        images = generate(model.pipeline(), prompts, seeds, s.resolution, s.num_inference_steps,
                          s.guidance_scale, s.sample_batch_size)
    model.unet.train(was_training[0]), model.text_encoder.train(was_training[1])
    folder = samples_dir(s)
    folder.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols=s.num_validation_images).save(folder / f"step-{step:06d}.png")
    if on_sample is not None:
        on_sample(step, images)
    return images


def peak_memory(device: torch.device) -> tuple[float | None, str]:
    """The most memory the run took, in GiB, and what was measured. On a GPU: its tensors' peak
    (torch.cuda.max_memory_allocated, reset when the run starts). On a CPU: the peak resident
    memory of the whole process (getrusage), which cannot be reset, so it also counts whatever ran
    before in the same process (an earlier run, another model loaded)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GPU"
    try:
        import resource  # (not on Windows)
    except ImportError:
        return None, "not measured"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20), "CPU RSS"


def usage(device: torch.device, seconds: float, steps: int) -> dict:
    """What a run cost, for comparing runs: the wall time of its training loop (steps, samples and
    checkpoints; a resumed run counts from where it resumed), the steps in that time, its peak memory."""
    gib, measured = peak_memory(device)
    return {"seconds": round(seconds, 2), "steps": steps,
            "peak_memory_gib": None if gib is None else round(gib, 3), "memory": measured}


NAN_HELP = ("the loss became {loss} at step {step}, so that step was not applied. Likely causes: "
            "a learning rate too high (learning_rate={lr}), or fp16 overflow (mixed_precision="
            "{mp!r}: try 'bf16' on a GPU that has it, or 'no'). {resume}")


def make_accelerator(s: Settings) -> Accelerator:
    # accelerate keeps one mixed-precision choice per process; a notebook may call train() again
    # with another, so forget the last one (the processes' own setup, PartialState, is kept)
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=s.mixed_precision, cpu=s.device == "cpu",
                              gradient_accumulation_steps=s.gradient_accumulation_steps)
    if accelerator.num_processes > 1:
        if s.step_in_backward:
            raise DreamlabError("step_in_backward works on one GPU only (several GPUs must average "
                                "all gradients before any update): set it to False")
        if s.text_encoder_stop_step is not None:  # DDP cannot drop weights from its reduction midway
            raise DreamlabError("text_encoder_stop_step works on one GPU only: set it to None")
    return accelerator


def make_loader(s: Settings, sd: StableDiffusion):
    """The shuffled batches of instance (and class) images, with cached latents if asked, and
    the sampler that shuffles them (batches() seeds it for each pass)."""
    dataset = subjects_dataset(s.subjects(), sd.tokenizer, s.resolution, s.prior_preservation,
                               s.center_crop, s.seed)
    if s.cache_latents:  # encode once; then the VAE (and a frozen text encoder) leave the GPU
        dataset = cache_dataset(dataset, sd, embed_text=not s.text_encoder_trains)
        sd.vae.to("cpu")
        if not s.text_encoder_trains:
            sd.text_encoder.to("cpu")
    sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator())
    loader = torch.utils.data.DataLoader(dataset, batch_size=s.train_batch_size, sampler=sampler,
                                         collate_fn=collate, drop_last=len(dataset) >= s.train_batch_size)
    return loader, sampler


def train(s: Settings, sd: StableDiffusion | None = None, on_step=None, on_sample=None,
          save: bool = True) -> TrainResult:
    """Fine-tune with DreamBooth. `sd` reuses an already loaded model (the notebooks do);
    `on_step(step, logs)` is called after every optimiser step (the live loss plot uses it),
    `on_sample(step, images)` after every set of validation samples. Afterwards the only model
    left in memory is the one in the result: a second train() needs no more memory than the first."""
    for report in preflight.check(s):  # settings, photos, folders: before anything slow
        print(report)
    free_memory()  # what an earlier run left in reference cycles would hold on to its GPU memory
    try:
        return run(s, sd, on_step, on_sample, save)
    finally:
        free_memory()  # the optimizer and accelerate's wrappers (reference cycles) and their memory


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Training:
    """What a run holds while it trains: set_up() makes it, the loop's steps use it."""
    accelerator: Accelerator
    sd: StableDiffusion
    trained: dict  # the trained weights, by name
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    loader: torch.utils.data.DataLoader
    sampler: torch.utils.data.RandomSampler  # shuffles the loader; batches() seeds it for each pass
    noise: torch.Generator  # noise and timesteps come from it; saved in checkpoints, resuming replays them
    early: StepInBackward | None = None  # with step_in_backward: the weights change inside backward
    history: list = field(default_factory=list)  # one dict of losses per step
    last_checkpoint: Path | None = None


def set_up(s: Settings, sd: StableDiffusion, accelerator: Accelerator) -> Training:
    """Everything a run needs before its first step: the trained weights, the optimizer and its
    schedule, the class images, the batches. accelerate's prepare() wraps what is trained for
    mixed precision and for several GPUs; training_step then calls the wrapped modules through `sd`."""
    trained = make_trainable(s, sd, accelerator.device)
    optimizer = make_optimizer(parameter_groups(s, trained), s.learning_rate, s.adam_weight_decay,
                               s.use_8bit_adam, accelerator.device)
    if s.prior_preservation:
        prepare_class_images(s, sd, accelerator)
    loader, sampler = make_loader(s, sd)
    lr_scheduler = get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=s.lr_warmup_steps,
                                 num_training_steps=s.max_train_steps)
    early = None
    if s.step_in_backward:  # the optimizer steps inside backward: accelerate must not step it
        sd.unet, loader = accelerator.prepare(sd.unet, loader)
        early = StepInBackward(optimizer, s.max_grad_norm, accelerator.scaler)
    else:
        sd.unet, optimizer, loader, lr_scheduler = accelerator.prepare(sd.unet, optimizer, loader,
                                                                      lr_scheduler)
    if s.text_encoder_trains:
        sd.text_encoder = accelerator.prepare(sd.text_encoder)
    noise = torch.Generator(accelerator.device).manual_seed(s.seed + accelerator.process_index)
    return Training(accelerator, sd, trained, optimizer, lr_scheduler, loader, sampler, noise, early)


def run(s: Settings, sd: StableDiffusion | None, on_step, on_sample, save: bool) -> TrainResult:
    """train()'s steps: the model, the set-up, where to start, the loop, the saved model."""
    accelerator = make_accelerator(s)
    if accelerator.device.type == "cuda":  # this run's peak, not an earlier one's
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    set_seed(s.seed)
    if sd is None:
        sd = load_model(s.model, s.revision, device=accelerator.device)
    t = set_up(s, sd, accelerator)
    start, t.history, t.last_checkpoint = resume(s, t.trained, t.optimizer, t.lr_scheduler, t.noise,
                                                 accelerator.scaler, accelerator.process_index)
    try:
        result = loop(s, t, start, on_step, on_sample)
    finally:  # (also after an error: the hooks would outlive the run on a model a notebook keeps)
        if t.early is not None:
            t.early.remove()
    finish(s, result, accelerator)
    if save and accelerator.is_main_process:
        result.output_dir = save_model(s, result, resumed_at=start)
    return result


def loop(s: Settings, t: Training, start: int, on_step, on_sample) -> TrainResult:
    """From step `start` to max_train_steps: an optimizer step, then what follows it (the history,
    the callbacks, samples and checkpoints), until the end or the stop button."""
    stream = batches(t.loader, t.sampler, s.seed, start * s.gradient_accumulation_steps)
    main = t.accelerator.is_main_process
    bar = tqdm(range(start, s.max_train_steps), desc="training", disable=not main)
    samples, stopped, step, started = None, False, start, time.perf_counter()
    if s.validation_steps and start == 0 and main:
        samples = sample_now(s, t.sd, t.accelerator, 0, on_sample)  # the starting point, to compare with
    with stop_on_interrupt() as interrupt:
        for step in bar:
            stop_at = s.text_encoder_stop_step
            if stop_at is not None and step >= stop_at and t.sd.text_encoder.training:
                t.sd.text_encoder.requires_grad_(False).eval()  # from here on it stays as it is
            logs = optimizer_step(s, t, stream, step)
            step += 1
            logs.update(step=step, lr=t.lr_scheduler.get_last_lr()[0])
            t.history.append(logs)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if on_step is not None:
                on_step(step, logs)
            if s.validation_steps and step % s.validation_steps == 0 and main:
                samples = sample_now(s, t.sd, t.accelerator, step, on_sample)
            stopped = stop_requested(t.accelerator, interrupt) and step < s.max_train_steps
            every_n = s.checkpointing_steps and step % s.checkpointing_steps == 0
            # (a compact checkpoint of the last step would only repeat the model saved next)
            if (every_n and not (s.compact_checkpoints and step == s.max_train_steps)) or stopped:
                t.last_checkpoint = save_checkpoint(s, t, step)
            if stopped:
                print(f"stopped at step {step} of {s.max_train_steps}; checkpoint {t.last_checkpoint} "
                      "(resume_from='latest' goes on from there)")
                break
    return TrainResult(sd=t.sd, history=t.history, stopped_early=stopped, checkpoint=t.last_checkpoint,
                       step=step, settings=s, samples=samples,
                       usage=usage(t.accelerator.device, time.perf_counter() - started, step - start))


def optimizer_step(s: Settings, t: Training, stream, step: int) -> dict:
    """One optimizer step (over gradient_accumulation_steps batches); returns the last batch's losses.
    A loss that is not finite stops the run before it touches the weights."""
    models = [t.sd.unet] + ([t.sd.text_encoder] if s.text_encoder_trains else [])
    for _ in range(s.gradient_accumulation_steps):
        with t.accelerator.accumulate(*models):
            loss, logs = training_step(t.sd, next(stream), s.prior_loss_weight, t.noise,
                                       s.offset_noise, s.min_snr_gamma)
            if not math.isfinite(logs["loss"]):
                raise DreamlabError(NAN_HELP.format(
                    loss=logs["loss"], step=step, lr=s.learning_rate, mp=s.mixed_precision,
                    resume=f"The last good checkpoint, {t.last_checkpoint}, is intact."
                    if t.last_checkpoint else "No checkpoint was written (checkpointing_steps=0)."))
            t.accelerator.backward(loss)  # with step_in_backward, the weights change in here
            if t.early is None:
                if t.accelerator.sync_gradients and s.max_grad_norm > 0:
                    t.accelerator.clip_grad_norm_(list(t.trained.values()), s.max_grad_norm)
                t.optimizer.step()
                t.optimizer.zero_grad(set_to_none=True)  # frees the gradients' memory
            elif t.early.end_step() and s.mixed_precision != "fp16":
                raise DreamlabError(
                    f"a gradient became inf or NaN at step {step} (learning_rate={s.learning_rate}); "
                    f"step_in_backward had already updated some weights, so resume from the last "
                    f"checkpoint ({t.last_checkpoint}) with a lower rate.")
            t.lr_scheduler.step()
    return logs


def stop_requested(accelerator: Accelerator, interrupt: dict) -> bool:
    """Whether the stop button was pressed; with several processes, on any of them (all must stop
    at the same step, or they hang)."""
    if accelerator.num_processes > 1:
        flag = torch.tensor(float(interrupt["stop"]), device=accelerator.device)
        interrupt["stop"] = accelerator.reduce(flag, "max").item() > 0
    return interrupt["stop"]


def save_checkpoint(s: Settings, t: Training, step: int) -> Path | None:
    rng_states = gather_object([{"noise": t.noise.get_state()}])  # every process's, in order
    if t.accelerator.is_main_process:
        return checkpoints.save_checkpoint(checkpoint_dir(s), step, t.trained, t.optimizer, t.lr_scheduler,
                                           rng_states, t.history, s, t.accelerator.scaler,
                                           keep=s.checkpoints_total_limit)
    return None


def finish(s: Settings, result: TrainResult, accelerator: Accelerator) -> None:
    """Take the trained modules out of accelerate's wrappers (whose autocast wrapper and lists would
    keep the model and optimizer alive), and make the model ready to sample."""
    sd = result.sd
    accelerator.wait_for_everyone()
    sd.unet = accelerator.unwrap_model(sd.unet, keep_fp32_wrapper=False)
    sd.text_encoder = accelerator.unwrap_model(sd.text_encoder, keep_fp32_wrapper=False)
    accelerator.free_memory()
    ready_to_sample(s, sd, accelerator.device)


def ready_to_sample(s: Settings, sd: StableDiffusion, device) -> None:
    """Every part in one precision on the device, as the pipeline needs: float32, or float16 with
    save_precision="fp16" (what is saved is then what you sample from, and a GPU samples faster)."""
    sd.unet.eval(), sd.text_encoder.eval()
    dtype = torch.float16 if s.save_precision == "fp16" else torch.float32
    for module in (sd.vae, sd.text_encoder, sd.unet):
        place(module, device, dtype)
