"""A run's folders, how a run goes on where it stopped, and how its model is saved.

    <output_dir>/               the model (a diffusers folder, or LoRA adapters), README.md (the
                                model card) and training.json: how far the run got, its settings,
                                losses, time and peak memory; metrics.json: numbers measured
                                afterwards (compare.save_metrics; compare.py lays runs side by side)
    <output_dir>-checkpoints/   checkpoint-000200/, ... (checkpoints.py)
    <output_dir>-samples/       step-000100.png, ...: the validation prompts, drawn while training

A run is its settings (checkpoints.run_settings: the photos, prompts, learning rate, ... but not
where its files go). With resume_from="latest", train() goes on with the same run: from its
finished model (nothing left to train), or from its last checkpoint; a run with other settings
starts afresh, and says so.
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from . import checkpoints
from .errors import DreamlabError
from .export import LORA_FILE, save_diffusers, save_lora, write_model_card
from .identifier import load_identifier, save_identifier
from .models import StableDiffusion, load_model
from .settings import Settings

RUN_RECORD = "training.json"
METRICS = "metrics.json"


def checkpoint_dir(s: Settings) -> Path:
    """Checkpoints live beside the model folder (the model folder is replaced when saved)."""
    return Path(s.output_dir + "-checkpoints")


def samples_dir(s: Settings) -> Path:
    return Path(s.output_dir + "-samples")


def model_status(s: Settings) -> str:
    """What s.output_dir holds for a run with settings `s`: "complete", "missing", "unfinished:
    trained N of its M steps", or "made with other settings: ..." (a lesson that reuses an earlier
    lesson's model asks this first)."""
    record = Path(s.output_dir) / RUN_RECORD
    if not record.exists():
        return "missing"
    saved = json.loads(record.read_text())
    changed = checkpoints.differences(saved["run"], checkpoints.run_settings(s))
    if changed:
        return f"made with other settings: {'; '.join(changed)}"
    if saved["step"] < saved["max_train_steps"]:
        return f"unfinished: trained {saved['step']} of its {saved['max_train_steps']} steps"
    return "complete"


def resume(s: Settings, trained: dict, optimizer, lr_scheduler, noise, scaler=None,
           process_index: int = 0) -> tuple[int, list, Path | None]:
    """With resume_from, put this run back where it stopped and return (its step, its loss history,
    its checkpoint); (0, [], None) for a fresh run. Checkpoints of a run with other settings are not
    resumed: with resume_from="latest" a new run starts (and says so), deleting them."""
    folder = checkpoint_dir(s)
    found = checkpoints.checkpoints(folder)
    if not s.resume_from:
        if found and s.checkpointing_steps:  # keep-last-K would delete them in favour of this run's
            raise DreamlabError(f"{folder} holds an earlier run's checkpoints (the last: {found[-1].name}): "
                                "set resume_from='latest' to go on with it, or delete that folder (or "
                                "choose another output_dir) to start afresh")
        return 0, [], None
    if s.resume_from == "latest" and not s.lora and model_status(s) == "complete":
        history = load_saved_model(s, trained)
        if history is not None:
            print(f"nothing to train: this run is complete, and its model in {s.output_dir} is loaded")
            return s.max_train_steps, history, None
    path = checkpoints.find_checkpoint(s.resume_from, folder)
    if path is None:
        print(f"no checkpoint in {folder} yet: starting from step 0")
        return 0, [], None
    changed = checkpoints.same_run(checkpoints.read_state(path), s)
    if changed and s.resume_from != "latest":
        raise DreamlabError(f"checkpoint {path} is from a run with other settings: {'; '.join(changed)}. "
                            "Set them back, or resume_from='latest' to start a new run")
    if changed:
        print(f"starting a new run: the checkpoints in {folder} are from a run with other settings "
              f"({'; '.join(changed)}), so they are deleted")
        if process_index == 0:
            for old in found:
                shutil.rmtree(old)
        return 0, [], None
    step, history = checkpoints.load_checkpoint(path, trained, optimizer, lr_scheduler, {"noise": noise},
                                                scaler, process_index)
    compact = " (a compact checkpoint: close to, not exactly, the uninterrupted run)" \
        if checkpoints.read_state(path).get("compact") else ""
    print(f"resumed from {path} (step {step} of {s.max_train_steps}){compact}")
    return step, history, path


def load_saved_model(s: Settings, trained: dict) -> list | None:
    """Put the trained weights of the complete model saved in s.output_dir back (a full fine-tune's
    diffusers folder); return its loss history, or None when its weights are not this run's."""
    files = [(part, path) for part in ("unet", "text_encoder")
             for path in sorted((Path(s.output_dir) / part).glob("*.safetensors"))]
    names = set()
    for part, path in files:
        with safe_open(path, "pt") as f:
            names |= {f"{part}.{key}" for key in f.keys()}
    if not set(trained) <= names:
        return None
    with torch.no_grad():
        for part, path in files:
            with safe_open(path, "pt") as f:
                for key in f.keys():
                    if f"{part}.{key}" in trained:
                        trained[f"{part}.{key}"].copy_(f.get_tensor(key))
    return json.loads((Path(s.output_dir) / RUN_RECORD).read_text()).get("history", [])


def save_model(s: Settings, result, resumed_at: int) -> Path:
    """Save the model (LoRA adapters, or the whole pipeline), a record of the run and a model card
    that says how many of its steps were trained. Returns the saved weights' path."""
    folder = Path(s.output_dir)
    saved = folder / LORA_FILE if s.lora else folder
    if resumed_at == result.step and model_status(s) == "complete":
        return saved  # nothing was trained: what is saved is this very model
    if s.lora:
        save_lora(result.sd, folder)
        if s.train_identifier:  # the adapters do not hold the learned word
            save_identifier(result.sd, s.subjects(), folder)
    else:  # with a checkpoint to fall back on, the old model can go first (room on Google Drive)
        save_diffusers(result.sd, folder, in_place=result.checkpoint is not None)
    (folder / RUN_RECORD).write_text(json.dumps(
        {"step": result.step, "max_train_steps": s.max_train_steps, "stopped_early": result.stopped_early,
         "run": checkpoints.run_settings(s), "settings": s.to_dict(), "usage": result.usage,
         "history": result.history}, indent=1, default=str))
    (folder / METRICS).unlink(missing_ok=True)  # an earlier model's numbers: this one is still to measure
    # A README.md the Hub shows: base model, prompt, settings, the last samples
    samples = result.samples  # the first prompt's pictures go on the card
    first = samples[:s.num_validation_images] if samples else None
    write_model_card(folder, s, images=first, prompt=(s.validation_prompts or [None])[0],
                     steps=(result.step, s.max_train_steps))
    if s.compact_checkpoints and result.step == s.max_train_steps:
        # they were there for a disconnect; the model now holds the same weights
        for done in checkpoints.checkpoints(checkpoint_dir(s)):
            shutil.rmtree(done)
        result.checkpoint = None
    return saved


def load_trained(folder, base: str | None = None, revision: str | None = None,
                 dtype: torch.dtype = torch.float32, device="cpu") -> StableDiffusion:
    """A run's saved model: a full fine-tune's diffusers folder as it is; a LoRA run's adapters,
    and the word it learned for the identifier, on top of `base`, the model they were trained on."""
    folder = Path(folder)
    if not (folder / LORA_FILE).exists():
        return load_model(str(folder), dtype=dtype, device=device)
    if not base:
        raise DreamlabError(f"{folder} holds LoRA adapters: give the model they were trained on as base")
    sd = load_model(base, revision, dtype, device)
    # the pipeline shares sd's modules; "default" is the adapter name export looks for
    sd.pipeline().load_lora_weights(str(folder), adapter_name="default")
    load_identifier(sd, folder)  # the adapters do not hold the learned word
    return sd
