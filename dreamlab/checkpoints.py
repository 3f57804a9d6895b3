"""Checkpoints that survive a disconnect: everything needed to go on training, written atomically.

A checkpoint is a folder `checkpoint-000100/` (the step) holding
    trained.safetensors     the weights being trained (all of the UNet, or only the LoRA adapters)
    optimizer.safetensors   AdamW's running averages; optimizer.json: its settings per group
    rng-0.safetensors       the random generators of process 0 (noise, timesteps); rng-1 of
                            process 1 (several GPUs draw different noise), ...
    state.json              step, learning-rate schedule, fp16 loss scale, loss history, the run's
                            settings
Large files are written in shards of at most SHARD (trained-00001-of-00007.safetensors, ...), so
that writing one never needs more than that much memory beside the model: SD 1.5's UNet is 3.4 GB
of weights and 6.9 GB of optimizer state. A *compact* checkpoint (compact_checkpoints=True, for
Google Drive's 15 GB) keeps the trained weights in half precision and no optimizer state: 1.7 GB
for the UNet instead of 10.3; a run resumed from it is close to the uninterrupted one, not equal
(the weights are rounded to float16 and AdamW's running averages start again from zero).

A checkpoint is written as `checkpoint-000100.tmp/` and renamed only when complete, so a crash or a
kill at any moment leaves the last complete checkpoint as it was. Nothing here is a pickle.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import DreamlabError

NAME = re.compile(r"^checkpoint-(\d+)$")
SHARD = "500MB"  # the most memory (on the CPU) that writing one file of a checkpoint takes
# Settings that do not change what is computed: a checkpoint made with other values of these is
# still this run's. Everything else (learning rate, steps, prior preservation, the photos...) must match.
SAME_RUN_WHATEVER = {"output_dir", "resume_from", "checkpointing_steps", "checkpoints_total_limit",
                     "compact_checkpoints", "validation_prompts", "validation_steps",
                     "num_validation_images", "device", "sample_batch_size", "num_inference_steps",
                     "guidance_scale", "save_precision", "gradient_checkpointing", "attention",
                     # folders are compared by what they hold (photos() below), not by their path,
                     # which changes from one Colab machine to the next
                     "instance_dir", "class_dir", "more_subjects", "model"}


def checkpoints(folder) -> list[Path]:
    """The complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if NAME.match(p.name) and (p / "state.json").exists()] \
        if folder.is_dir() else []
    return sorted(found, key=lambda p: int(NAME.match(p.name)[1]))


def find_checkpoint(resume_from: str, folder) -> Path | None:
    """'latest' -> the newest checkpoint in `folder` (None when there is none yet: a fresh run);
    anything else must be a checkpoint folder."""
    if resume_from == "latest":
        found = checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / "state.json").exists():
        found = [str(p) for p in checkpoints(folder)]
        raise DreamlabError(f"resume_from={resume_from!r} is not a complete checkpoint folder (no "
                            f"state.json in it); give 'latest' or one of {found}")
    return path


# ----------------------------------------------------------------------------------------
# Which run a checkpoint belongs to


def run_settings(s) -> dict:
    """What makes a run this run: the settings that change what is computed, with each folder of
    photos named by its files (name and size) and a local model by its folder's name."""
    values = {k: v for k, v in s.to_dict().items() if k not in SAME_RUN_WHATEVER}
    values["model"] = s.model if not Path(s.model).expanduser().exists() else Path(s.model).name
    values["subjects"] = [{"prompts": [subject.instance_prompt, subject.class_prompt],
                           "photos": folder_files(subject.instance_dir)} for subject in s.subjects()]
    return values


def folder_files(folder) -> list:
    folder = Path(folder)
    return sorted([p.name, p.stat().st_size] for p in folder.iterdir() if p.is_file()) \
        if folder.is_dir() else []


def differences(then: dict, now: dict) -> list[str]:
    """The settings that differ, as 'name=then (now value)'."""
    return [f"{k}={then.get(k)!r} (now {now.get(k)!r})" for k in sorted(set(then) | set(now))
            if then.get(k) != now.get(k)]


def same_run(state: dict, s) -> list[str]:
    """The differences between the run that wrote a checkpoint (its state.json) and settings `s`;
    empty when `s` goes on with that run. max_train_steps may grow when the learning rate's
    schedule does not depend on it (constant): that run then simply goes on for longer."""
    then, now = dict(state.get("run", {})), run_settings(s)
    if s.lr_scheduler.startswith("constant") and then.get("max_train_steps", 0) <= now["max_train_steps"]:
        then["max_train_steps"] = now["max_train_steps"]
    if state["step"] > s.max_train_steps:
        then["max_train_steps"] = f"{then.get('max_train_steps')} (its checkpoint is at step {state['step']})"
    return differences(then, now)


# ----------------------------------------------------------------------------------------
# Writing and reading


def write_shards(tensors: dict[str, torch.Tensor], folder: Path, name: str, dtype=None) -> None:
    """`name`.safetensors, or `name`-00001-of-0000N.safetensors shards of at most SHARD each: only
    one shard at a time is copied to the CPU."""
    plan = split_torch_state_dict_into_shards(tensors, filename_pattern=name + "{suffix}.safetensors",
                                              max_shard_size=SHARD)
    for filename, names in plan.filename_to_tensors.items():
        shard = {k: tensors[k].detach().to("cpu", dtype or tensors[k].dtype).contiguous() for k in names}
        save_file(shard, folder / filename)


def shard_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.safetensors")) + sorted(folder.glob(f"{name}-*-of-*.safetensors"))


def flatten_optimizer(state: dict) -> tuple[dict, dict]:
    """An optimizer's state_dict -> (tensors for safetensors, the rest for JSON)."""
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                rest["state"].setdefault(str(index), {})[key] = value
    return tensors, rest


def unflatten_optimizer(tensors: dict, rest: dict) -> dict:
    state = {int(i): dict(values) for i, values in rest["state"].items()}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def sync(folder: Path) -> None:
    """Push the files to the disk before the rename that publishes them (matters on power loss
    and on network drives such as Google Drive, not on a killed process)."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def save_checkpoint(folder, step: int, trained: dict, optimizer, lr_scheduler, rng_states: list[dict],
                    history: list, settings, scaler=None, keep: int = 2) -> Path:
    """Write checkpoint `step` of the run with `settings` into `folder` atomically, then delete all
    but the newest `keep`. `rng_states`: one {name: generator state} per process, in process order;
    `scaler`: the fp16 loss scaler, if any. A failure (a full disk) removes the half-written folder
    and raises a DreamlabError; the checkpoints before it are untouched."""
    folder = Path(folder)
    final = folder / f"checkpoint-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_shards(trained, tmp, "trained", torch.float16 if settings.compact_checkpoints else None)
        if not settings.compact_checkpoints:
            tensors, rest = flatten_optimizer(optimizer.state_dict())
            write_shards(tensors, tmp, "optimizer")
            (tmp / "optimizer.json").write_text(json.dumps(rest))
        for index, states in enumerate(rng_states):
            save_file({k: v.cpu() for k, v in states.items()}, tmp / f"rng-{index}.safetensors")
        (tmp / "state.json").write_text(json.dumps(  # written last: its presence marks a complete folder
            {"step": step, "lr_scheduler": lr_scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "history": history,
             "compact": settings.compact_checkpoints, "run": run_settings(settings),
             "settings": settings.to_dict()}, indent=1, default=str))
        sync(tmp)
    except (OSError, RuntimeError) as e:  # RuntimeError: safetensors' own "No space left on device"
        shutil.rmtree(tmp, ignore_errors=True)
        intact = [p.name for p in checkpoints(folder)]
        raise DreamlabError(f"could not write checkpoint {final} ({type(e).__name__}: {e}). Is the disk "
                            f"full? The checkpoints before it are intact: {intact}") from None
    if final.exists():  # the same step saved again (e.g. interrupted right after a checkpoint)
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    for stale in checkpoints(folder)[:-keep]:
        shutil.rmtree(stale)
    return final


def read_state(path) -> dict:
    return json.loads((Path(path) / "state.json").read_text())


def load_checkpoint(path, trained: dict, optimizer, lr_scheduler, generators: dict, scaler=None,
                    process_index: int = 0) -> tuple[int, list]:
    """Put a checkpoint's weights, optimizer, schedule, loss scale and this process's generators
    back; return (step, history). The weights are read one tensor at a time."""
    path = Path(path)
    state = read_state(path)
    files = shard_files(path, "trained")
    names = set()
    for file in files:
        with safe_open(file, "pt") as f:
            names |= set(f.keys())
    if names != set(trained):
        raise DreamlabError(f"checkpoint {path} holds other weights than this run trains: "
                            f"start afresh (resume_from=None) or use the settings it was made with")
    with torch.no_grad():
        for file in files:
            with safe_open(file, "pt") as f:
                for name in f.keys():
                    trained[name].copy_(f.get_tensor(name))
    if not state.get("compact"):  # the optimizer's state goes straight to where the weights are
        device = str(next(iter(trained.values())).device)
        tensors = {k: v for f in shard_files(path, "optimizer") for k, v in load_file(f, device).items()}
        rest = json.loads((path / "optimizer.json").read_text())
        optimizer.load_state_dict(unflatten_optimizer(tensors, rest))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = path / f"rng-{process_index}.safetensors"
    if rng.exists():
        for name, value in load_file(rng).items():
            generators[name].set_state(value)
    else:  # written by fewer processes: this one goes on with its own seed (no exact replay)
        print(f"{path} has no random state for process {process_index}: its noise starts afresh")
    return state["step"], state["history"]
