"""The two datasets of DreamBooth and the image preparation they share.

- instance images: the 3-10 photos of *your* subject, all with one prompt ("a photo of sks dog");
- class images: pictures of the subject's class made by the base model itself ("a photo of a
  dog"; class_images.py draws them). Training on them too ("prior preservation") keeps the
  model's idea of the class intact.

How a photo file is read (formats, sizes, captions, what is skipped and why) is in photos.py.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import DreamlabError
from .photos import IMAGE_SUFFIXES, Unreadable, is_image_file, is_system_file, read_caption, read_image, scan


def list_images(folder, what: str = "image") -> list[Path]:
    """The image files in `folder`, sorted (system files and folders left out); a clear error when
    there are none. For class images; the learner's photos go through `photos.scan`, which also
    reads them and says which it skips and why."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamlabError(f"{what} folder {folder} does not exist (or is not a folder).")
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not files:
        others = sorted(p.name for p in folder.iterdir() if not is_system_file(p))
        seen = f" It holds: {', '.join(others[:5])}." if others else " It is empty."
        raise DreamlabError(f"{what} folder {folder} has no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}).{seen}")
    return files


def open_image(path, resolution: int | None = None) -> Image.Image:
    """Open a photo (a path or an open file) upright (phones store rotation in EXIF) and in 8-bit
    RGB, whatever it was stored as (photos.py says how). With `resolution`, decoded at reduced size
    and shrunk so its short side is `resolution`."""
    try:
        return read_image(path, resolution)[0]
    except Unreadable as why:
        raise DreamlabError(f"cannot read image {path}: {why}") from None


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
    if not caption.is_file():
        return default
    try:
        return read_caption(caption)
    except Unreadable as why:
        raise DreamlabError(f"caption file {caption} {why} (instance prompt: {default!r}).") from None


def _check_readable(files: list[Path], what: str) -> None:
    """Decode every file once; one error naming all those that cannot be read."""
    bad = []
    for path in files:
        try:
            read_image(path)
        except Unreadable as why:
            bad.append(f"  {path.name}: {why}")
    if bad:
        raise DreamlabError(f"{what} folder {files[0].parent}: {len(bad)} image(s) cannot be read:\n"
                            + "\n".join(bad))


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
        # The same reading as the report that `dreamlab train` prints: the same photos used and
        # skipped. Each is decoded once, at reduced size: a 4000 px JPEG decodes slower than a step.
        self.report = scan(instance_dir, resolution, tokenizer, "instance").check()
        self.instance_files = [photo.path for photo in self.report.photos]
        self.instance_images = [photo.image for photo in self.report.photos]
        self.instance_prompts = [photo.caption or instance_prompt for photo in self.report.photos]
        self.instance_ids = [tokenize(tokenizer, prompt) for prompt in self.instance_prompts]
        self.class_files = list_images(class_dir, "class") if class_dir is not None else []
        if self.class_files:
            _check_readable(self.class_files, "class")  # fail now, naming the files, not mid-training
            self.class_ids = tokenize(tokenizer, class_prompt)

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
