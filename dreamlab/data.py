"""The two datasets of DreamBooth and the image preparation they share.

- instance images: the 3-10 photos of *your* subject, all with one prompt ("a photo of sks dog");
- class images: pictures of the subject's class made by the base model itself ("a photo of a
  dog"; class_images.py draws them). Training on them too ("prior preservation") keeps the
  model's idea of the class intact.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import DreamlabError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def list_images(folder, what: str = "image") -> list[Path]:
    """The image files in `folder`, sorted; a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamlabError(f"{what} folder {folder} does not exist (or is not a folder).")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        seen = f" It holds: {', '.join(others[:5])}." if others else " It is empty."
        raise DreamlabError(f"{what} folder {folder} has no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}).{seen}")
    return files


def open_image(path) -> Image.Image:
    """Open a photo upright (phones store rotation in EXIF) and in RGB."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DreamlabError(f"cannot read image {path}: {e}. Remove or replace that file.") from None


def resize_and_crop(image: Image.Image, size: int, center: bool = True,
                    rng: np.random.Generator | None = None) -> Image.Image:
    """Scale the short side to `size`, then cut a `size` x `size` square (centred or random)."""
    w, h = image.size
    if min(w, h) != size:  # (the dataset's photos were shrunk to `size` once: no resampling then)
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                             Image.Resampling.BICUBIC)
        w, h = image.size
    if center or rng is None:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W) in [-1, 1], the range SD's VAE was trained on."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """The inverse of to_tensor, for showing a (3, H, W) tensor in [-1, 1]."""
    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def tokenize(tokenizer, prompt: str) -> torch.Tensor:
    """A prompt -> its 77 token ids, padded as SD was trained."""
    return tokenizer(prompt, padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids[0]


def caption_of(image_file: Path, default: str) -> str:
    """A `.txt` beside a photo (dog1.jpg -> dog1.txt) replaces the instance prompt for that photo:
    "a photo of sks dog on a sofa" tells the model what in the photo is *not* the subject."""
    caption = Path(image_file).with_suffix(".txt")
    if not caption.exists():
        return default
    text = caption.read_text(encoding="utf-8").strip()
    if not text:
        raise DreamlabError(f"caption file {caption} is empty: write a prompt in it, or delete it "
                            f"to use the instance prompt {default!r}.")
    return text


class DreamBoothDataset(Dataset):
    """Pairs each instance photo with the instance prompt (or its own caption file), and (with
    prior preservation) each class image with the class prompt. Its length is the larger of the
    two sets, so one pass shows every image of both at least once."""

    def __init__(self, instance_dir, instance_prompt: str, tokenizer, resolution: int = 512,
                 class_dir=None, class_prompt: str | None = None, center_crop: bool = True,
                 seed: int = 0):
        self.resolution, self.center_crop = resolution, center_crop
        # Random crops depend only on (seed, epoch, index): a resumed run sees the same ones.
        self.seed, self.epoch = seed, 0
        self.instance_files = list_images(instance_dir, "instance")
        # Photos are decoded and shrunk once: a 4000 px JPEG takes longer to decode than a step.
        self.instance_images = [self._shrink(open_image(p)) for p in self.instance_files]
        self.instance_prompts = [caption_of(p, instance_prompt) for p in self.instance_files]
        self.instance_ids = [tokenize(tokenizer, prompt) for prompt in self.instance_prompts]
        self.class_files = list_images(class_dir, "class") if class_dir is not None else []
        if self.class_files:
            for p in self.class_files:  # fail now, naming the file, rather than mid-training
                open_image(p)
            self.class_ids = tokenize(tokenizer, class_prompt)

    def _shrink(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        scale = self.resolution / min(w, h)
        return image if scale >= 1 else image.resize((round(w * scale), round(h * scale)),
                                                      Image.Resampling.LANCZOS)

    def _prepare(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        return to_tensor(resize_and_crop(image, self.resolution, self.center_crop, rng))

    def __len__(self) -> int:
        return max(len(self.instance_images), len(self.class_files))

    def __getitem__(self, i: int) -> dict:
        k, rng = i % len(self.instance_images), np.random.default_rng((self.seed, self.epoch, i))
        item = {"instance_images": self._prepare(self.instance_images[k], rng),
                "instance_ids": self.instance_ids[k]}
        if self.class_files:
            class_image = open_image(self.class_files[i % len(self.class_files)])
            item["class_images"] = self._prepare(class_image, rng)
            item["class_ids"] = self.class_ids
        return item


def set_epoch(dataset, epoch: int) -> None:
    """Tell the dataset(s) which pass this is: each pass draws new random crops."""
    for part in getattr(dataset, "datasets", [dataset]):
        if hasattr(part, "epoch"):
            part.epoch = epoch


def subjects_dataset(subjects, tokenizer, resolution: int, prior_preservation: bool,
                     center_crop: bool, seed: int) -> Dataset:
    """One dataset for one subject, or several subjects' datasets end to end (shuffled together
    by the DataLoader): each subject keeps its own prompt and its own class images."""
    parts = [DreamBoothDataset(s.instance_dir, s.instance_prompt, tokenizer, resolution,
                               class_dir=s.class_dir if prior_preservation else None,
                               class_prompt=s.class_prompt, center_crop=center_crop, seed=seed + i)
             for i, s in enumerate(subjects)]
    return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)


# What a dataset item may hold, and the batch key it is stacked under: pictures or their cached
# latents (cache.py), token ids or their cached text embeddings.
BATCH_KEYS = {"images": "pixel_values", "moments": "latent_moments", "ids": "input_ids",
              "embeddings": "text_embeddings"}


def collate(examples: list[dict]) -> dict:
    """Stack a batch; class examples go after instance ones so the loss can split them."""
    batch = {"num_instance": len(examples)}
    for kind, key in BATCH_KEYS.items():
        rows = [e[f"instance_{kind}"] for e in examples if f"instance_{kind}" in e]
        rows += [e[f"class_{kind}"] for e in examples if f"class_{kind}" in e]
        if rows:
            batch[key] = torch.stack(rows)
    return batch
