"""Checkpoints that survive a disconnect: everything needed to go on training, written atomically.

A checkpoint is a folder `checkpoint-000100/` (the step) holding
    trained.safetensors     the weights being trained (all of the UNet, or only the LoRA adapters)
    optimizer.safetensors   AdamW's running averages; optimizer.json: its settings per group
    rng-0.safetensors       the random generators of process 0 (noise, timesteps); rng-1 of
                            process 1 (several GPUs draw different noise), ...
    state.json              step, learning-rate schedule, loss history, the run's settings
It is written as `checkpoint-000100.tmp/` and renamed only when complete, so a crash or a kill
at any moment leaves the last complete checkpoint as it was. Nothing here is a pickle.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import DreamlabError

NAME = re.compile(r"^checkpoint-(\d+)$")
# Settings that must match to resume: the checkpoint's weights would not fit otherwise.
MUST_MATCH = ("model", "lora", "lora_rank", "train_text_encoder", "train_identifier")


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


def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    """An optimizer's state_dict -> (tensors for safetensors, the rest for JSON)."""
    tensors, rest = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                rest["state"].setdefault(str(index), {})[key] = value
    return tensors, rest


def _unflatten_optimizer(tensors: dict, rest: dict) -> dict:
    state = {int(i): dict(values) for i, values in rest["state"].items()}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _sync(folder: Path) -> None:
    """Push the files to the disk before the rename that publishes them (matters on power loss
    and on network drives such as Google Drive, not on a killed process)."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def save_checkpoint(folder, step: int, trained: dict, optimizer, lr_scheduler, rng_states: list[dict],
                    history: list, settings: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` into `folder` atomically, then delete all but the newest `keep`.
    `rng_states`: one {name: generator state} per process, in process order."""
    folder = Path(folder)
    final = folder / f"checkpoint-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: p.detach().cpu().contiguous() for k, p in trained.items()}, tmp / "trained.safetensors")
    tensors, rest = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(rest))
    for index, states in enumerate(rng_states):
        save_file({k: v.cpu() for k, v in states.items()}, tmp / f"rng-{index}.safetensors")
    (tmp / "state.json").write_text(json.dumps(  # written last: its presence marks a complete folder
        {"step": step, "lr_scheduler": lr_scheduler.state_dict(), "history": history,
         "settings": settings}, indent=1, default=str))
    _sync(tmp)
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


def load_checkpoint(path, trained: dict, optimizer, lr_scheduler, generators: dict,
                    settings: dict, process_index: int = 0) -> tuple[int, list]:
    """Put a checkpoint's weights, optimizer, schedule and this process's generators back;
    return (step, history)."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    for name in MUST_MATCH:
        then, now = state["settings"].get(name), settings.get(name)
        if then != now:
            raise DreamlabError(f"checkpoint {path} was trained with {name}={then!r}, this run has "
                                f"{name}={now!r}: set it back, or start afresh (resume_from=None)")
    weights = load_file(path / "trained.safetensors")
    if set(weights) != set(trained):
        raise DreamlabError(f"checkpoint {path} holds other weights than this run trains: "
                            f"start afresh (resume_from=None) or use the settings it was made with")
    with torch.no_grad():
        for name, param in trained.items():
            param.copy_(weights[name])
    optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"),
                                                   json.loads((path / "optimizer.json").read_text())))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    rng = path / f"rng-{process_index}.safetensors"
    if rng.exists():
        for name, value in load_file(rng).items():
            generators[name].set_state(value)
    else:  # written by fewer processes: this one goes on with its own seed (no exact replay)
        print(f"{path} has no random state for process {process_index}: its noise starts afresh")
    return state["step"], state["history"]
