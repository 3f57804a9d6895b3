"""Class images: pictures of the subject's class ("a photo of a dog") drawn by the base model
before training, for prior preservation. Drawn once into a folder, kept, and topped up."""

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import IMAGE_SUFFIXES, list_images
from .errors import DreamlabError


def generate_class_images(pipeline, class_dir, class_prompt: str, num_images: int,
                          batch_size: int = 4, resolution: int = 512, num_inference_steps: int = 25,
                          guidance_scale: float = 7.5, seed: int = 0) -> list[Path]:
    """Fill `class_dir` up to `num_images` pictures of the class, made by the base model.

    Images already there are kept and counted, so an interrupted run picks up where it stopped
    (your own class photos can be put there too).
    Each image's seed is its number, so the set is the same whatever the batch size.
    """
    class_dir = Path(class_dir)
    class_dir.mkdir(parents=True, exist_ok=True)
    have = [p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    # The folder remembers its prompt, so changing "a dog" to "a cat" cannot reuse dog images.
    record = class_dir / "class_prompt.txt"
    if have and record.exists() and record.read_text().strip() != class_prompt.strip():
        raise DreamlabError(
            f"class folder {class_dir} holds images made for {record.read_text().strip()!r}, "
            f"not {class_prompt!r}: choose another class_dir, or empty that folder.")
    record.write_text(class_prompt + "\n")
    missing = num_images - len(have)
    if missing <= 0:
        return list_images(class_dir, "class")
    device = pipeline.unet.device
    # On a GPU the pictures are drawn in half precision whatever the model's weights: a T4 draws
    # several times faster in float16 (a float32 model, loaded for training, included)
    half = torch.autocast("cuda", torch.float16, enabled=device.type == "cuda")
    index = max([int(p.stem.split("-")[-1]) for p in have if p.stem.split("-")[-1].isdigit()],
                default=-1) + 1
    with tqdm(total=missing, desc="class images") as bar:
        while missing > 0:
            n = min(batch_size, missing)
            seeds = [seed * 100_000 + index + k for k in range(n)]
            with half:
                images = pipeline([class_prompt] * n, height=resolution, width=resolution,
                                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                  generator=[torch.Generator(device).manual_seed(s) for s in seeds]).images
            for image in images:
                tmp = class_dir / f"class-{index:05d}.png.part"
                image.save(tmp, format="PNG")
                tmp.rename(class_dir / f"class-{index:05d}.png")  # never a half-written image
                index += 1
            missing -= n
            bar.update(n)
    return list_images(class_dir, "class")
