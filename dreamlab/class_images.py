"""Class images: pictures of the subject's class ("a photo of a dog") drawn by the base model
before training, for prior preservation. Drawn once into a folder, kept, and topped up.

The folder keeps a record, class_images.json: which prompt and which model drew its pictures,
and how (resolution, sampler, steps, guidance, seed, precision). The same prompt and model reuse
them, between lessons and between runs; another prompt or another model is refused, since its
pictures would teach the wrong prior. Folders made before the record existed hold
class_prompt.txt (the prompt only): they are still read, and given the new record.
"""

import contextlib
import json
import warnings
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from .data import IMAGE_SUFFIXES, list_images
from .errors import DreamlabError
from .models import RENAMED
from .sample import generate

RECORD = "class_images.json"
OLD_RECORD = "class_prompt.txt"  # the record of earlier versions: the prompt alone


def generate_class_images(pipeline, class_dir, class_prompt: str, num_images: int,
                          batch_size: int = 4, resolution: int = 512, num_inference_steps: int = 25,
                          guidance_scale: float = 7.5, seed: int = 0, model: str | None = None,
                          scheduler=None) -> list[Path]:
    """Fill `class_dir` up to `num_images` pictures of the class, made by the base model.

    Images already there are kept and counted, so an interrupted run picks up where it stopped
    (your own class photos can be put there too). Each image's seed is its number, so the set
    is the same whatever the batch size.

    `model` names the model that draws them (a hub id or a folder, as given to load_model);
    by default the folder `pipeline` was loaded from. `scheduler` is the sampler; by default
    DPM-Solver++ (multistep), whatever the pipeline's own: good pictures in 20 to 25 steps where
    SD's default sampler (PNDM) takes 50. Pass `scheduler=pipeline.scheduler` to keep the pipeline's.
    """
    class_dir = Path(class_dir)
    class_dir.mkdir(parents=True, exist_ok=True)
    model = model_name(model or pipeline_model(pipeline))
    have = [p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    record = read_record(class_dir)
    if have and record:
        check_record(record, class_dir, class_prompt, model, resolution)
    if not have or not record or record["model"] is None:  # a new folder, or one from before the record
        record = {"prompt": class_prompt, "model": model, "drawn": []}
        if have:
            record["found"] = f"{len(have)} images were already there (their model not recorded)"
        write_record(class_dir, record)
    missing = num_images - len(have)
    if missing <= 0:  # nothing written: a full folder may be shared read-only (a workshop's)
        return list_images(class_dir, "class")

    draw(pipeline, class_dir, record, class_prompt, missing, have, batch_size, resolution,
         num_inference_steps, guidance_scale, seed, scheduler)
    return list_images(class_dir, "class")


def draw(pipeline, class_dir: Path, record: dict, class_prompt: str, missing: int, have: list[Path],
         batch_size: int, resolution: int, num_inference_steps: int, guidance_scale: float, seed: int,
         scheduler) -> None:
    """Draw `missing` pictures numbered after those the folder has, each written whole or not at
    all, the record updated after each batch (so an interruption loses one batch at most)."""
    device = pipeline.unet.device
    # On a GPU the pictures are drawn in half precision whatever the model's weights: a T4 draws
    # several times faster in float16 (a float32 model, loaded for training, included)
    half = torch.autocast("cuda", torch.float16, enabled=device.type == "cuda")
    numbers = [int(p.stem.split("-")[-1]) for p in have if p.stem.split("-")[-1].isdigit()]
    index = max(numbers, default=-1) + 1
    for stale in class_dir.glob("*.part"):  # an image cut short by an interruption
        stale.unlink()
    if scheduler is None:
        scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    with half, using_scheduler(pipeline, scheduler), tqdm(total=missing, desc="class images") as bar:
        how = {"resolution": resolution, "sampler": type(scheduler).__name__,
               "steps": num_inference_steps, "guidance_scale": guidance_scale, "seed": seed,
               "precision": precision(pipeline)}
        drawn = record["drawn"]
        if not (drawn and drawn[-1]["first"] + drawn[-1]["count"] == index
                and {k: drawn[-1][k] for k in how} == how):  # (else this run continues the last)
            drawn.append({"first": index, "count": 0, **how})
        while missing > 0:
            n = min(batch_size, missing)
            seeds = [seed * 100_000 + index + k for k in range(n)]
            for image in generate(pipeline, [class_prompt] * n, seeds, resolution, num_inference_steps,
                                  guidance_scale, batch_size=n):
                tmp = class_dir / f"class-{index:05d}.png.part"
                image.save(tmp, format="PNG")
                tmp.rename(class_dir / f"class-{index:05d}.png")  # never a half-written image
                index += 1
            drawn[-1]["count"] += n
            write_record(class_dir, record)
            missing -= n
            bar.update(n)


def model_name(model: str | None) -> str:
    """How the record names a model: its hub id ("owner/name"), or a local folder's full path.
    A folder in the hub's download cache (.../models--owner--name/snapshots/<commit>, where
    load_model puts what it downloads) is named by its hub id."""
    if not model:
        raise DreamlabError("which model draws these class images? This pipeline was built in memory: "
                            "say it with generate_class_images(..., model=...), a hub id or a folder.")
    path = Path(model).expanduser()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")
    if path.exists():
        return str(path.resolve())
    return RENAMED.get(model, model)


def pipeline_model(pipeline) -> str | None:
    """The folder (or hub id) the pipeline's UNet was loaded from; None if it was built in memory."""
    name = pipeline.unet.config.get("_name_or_path")
    if not name:
        return None
    path = Path(name)
    if path.name == "unet" and (path.parent / "model_index.json").exists():  # a whole pipeline's folder
        return str(path.parent)
    return name


def read_record(class_dir: Path) -> dict | None:
    """The folder's record; a folder of an earlier version gives its prompt, with model None."""
    if (class_dir / RECORD).exists():
        return json.loads((class_dir / RECORD).read_text())
    if (class_dir / OLD_RECORD).exists():
        return {"prompt": (class_dir / OLD_RECORD).read_text().strip(), "model": None, "drawn": []}
    return None


def write_record(class_dir: Path, record: dict) -> None:
    tmp = class_dir / f"{RECORD}.part"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.rename(class_dir / RECORD)
    (class_dir / OLD_RECORD).unlink(missing_ok=True)  # replaced by the new record


def check_record(record: dict, class_dir: Path, class_prompt: str, model: str, resolution: int) -> None:
    """Refuse a folder whose images another prompt or another model made: they are that model's
    idea of that prompt, and prior preservation would pull the fine-tune towards it."""
    # SD's tokenizer lower-cases: "A photo of a dog" is the prompt the folder's images were drawn for
    same_prompt = record["prompt"].strip().lower() == class_prompt.strip().lower()
    if not same_prompt or record["model"] not in (None, model):  # (None: not recorded back then)
        made = f"for {record['prompt']!r}" + (f" by {record['model']}" if record["model"] else "")
        raise DreamlabError(
            f"class folder {class_dir} holds images made {made}, not for {class_prompt!r} by {model}. "
            "Class images must come from the model you fine-tune, with your class prompt: choose "
            "another class_dir (one per prompt and model), or delete the images in that folder.")
    sizes = sorted({d["resolution"] for d in record["drawn"]} - {resolution})
    if sizes:
        warnings.warn(f"class folder {class_dir} holds images drawn at {sizes} px, not {resolution}: "
                      "training will resize them. Choose another class_dir for sharper ones.", stacklevel=3)


@contextlib.contextmanager
def using_scheduler(pipeline, scheduler):
    """The pipeline samples with `scheduler` inside the block; its own comes back after."""
    own = pipeline.scheduler
    pipeline.scheduler = scheduler
    try:
        yield
    finally:
        pipeline.scheduler = own


def precision(pipeline) -> str:
    """What the pictures are computed in: the autocast type if one is on, else the UNet's weights'."""
    device = pipeline.unet.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else pipeline.unet.dtype
    return str(dtype).removeprefix("torch.")
