"""The judge: a small classifier that turns the toy model's pictures into numbers.

DreamBooth's paper measures its results with big pretrained networks (DINO and CLIP). In the toy
world (dreamlab/toyworld.py) we know exactly what every picture should show, so a tiny CNN,
trained on the world's own renders (scripts/train_judge.py), can say it: which shape, colour,
pattern and context a picture shows, and whether it is our subject, the red ball with bold white
stripes. Three numbers follow, each a fraction of pictures in [0, 1]:

    subject_fidelity   "a photo of sks ball on snow" pictures that show our subject  (DINO, CLIP-I)
    prompt_fidelity    pictures whose context is the one the prompt asked for       (CLIP-T)
    language_drift     "a photo of a ball" pictures that turned into our subject    (PRES)

    judge = load_judge()
    judge.predict([image])  # [{"shape": "ball", "colour": "red", ..., "is_subject": True}]
    subject_fidelity(judge, images)
"""

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from . import toyworld
from .data import to_tensor
from .settings import ASSETS

# What the judge answers: one head per question; "is_subject" is a yes/no head.
HEADS = {"shape": toyworld.SHAPES, "colour": tuple(toyworld.COLOURS),
         "pattern": toyworld.PATTERNS, "context": tuple(toyworld.CONTEXTS)}


class Judge(nn.Module):
    """Four 3x3 conv layers (each halving the picture), an average over the picture, then one
    linear head per question. About 60k parameters; a 64 px picture in, answers out."""

    def __init__(self, channels=(16, 32, 64, 64), heads: dict | None = None, size: int = 64):
        super().__init__()
        self.heads_labels = {name: tuple(labels) for name, labels in (heads or HEADS).items()}
        self.size = size
        layers, c_in = [], 3
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(c_in, len(labels))
                                    for name, labels in self.heads_labels.items()})
        self.heads["is_subject"] = nn.Linear(c_in, 1)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> {head: logits}; "is_subject" gives one logit per picture."""
        x = self.features(pixels)
        return {name: head(x) for name, head in self.heads.items()}

    def to_pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL pictures -> (B, 3, size, size) in [-1, 1] (resized if need be, as the VAE sees them)."""
        size = (self.size, self.size)
        return torch.stack([to_tensor(im.convert("RGB").resize(size, Image.BICUBIC)
                                      if im.size != size else im.convert("RGB")) for im in images])

    @torch.no_grad()
    def predict(self, images: list[Image.Image], batch_size: int = 256) -> list[dict]:
        """What each picture shows: {"shape", "colour", "pattern", "context": a label each,
        "is_subject": bool, "p_subject": the judge's confidence that it is our subject}."""
        was_training = self.training
        self.eval()
        answers = []
        for i in range(0, len(images), batch_size):
            logits = self(self.to_pixels(images[i:i + batch_size]))
            p_subject = torch.sigmoid(logits["is_subject"][:, 0]).tolist()
            labels = {name: [self.heads_labels[name][j] for j in logits[name].argmax(1).tolist()]
                      for name in self.heads_labels}
            for k, p in enumerate(p_subject):
                answer = {name: labels[name][k] for name in self.heads_labels}
                answers.append({**answer, "is_subject": p > 0.5, "p_subject": round(p, 4)})
        self.train(was_training)
        return answers


def load_judge(folder: str | Path = ASSETS / "judge") -> Judge:
    """The judge shipped with the course (config.json + model.safetensors; no pickle)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    judge = Judge(channels=config["channels"], heads=config["heads"], size=config["size"])
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(folder / "model.safetensors").items()}
    judge.load_state_dict(state)
    return judge.eval().requires_grad_(False)


def _fraction(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def subject_fidelity(judge: Judge, images: list[Image.Image]) -> float:
    """The fraction of pictures that show our subject (give it "a photo of sks ball ..." pictures)."""
    return _fraction([a["is_subject"] for a in judge.predict(images)])


def prompt_fidelity(judge: Judge, images: list[Image.Image], context: str) -> float:
    """The fraction of pictures set in `context` ("grass", "snow", "night sky" or "beach")."""
    if context not in toyworld.CONTEXTS:
        raise ValueError(f"unknown context {context!r}; choose one of {', '.join(toyworld.CONTEXTS)}")
    return _fraction([a["context"] == context for a in judge.predict(images)])


def language_drift(judge: Judge, images: list[Image.Image]) -> float:
    """The fraction of class pictures ("a photo of a ball") that turned into our subject: 0 is
    no drift. The same count as subject_fidelity, on the class prompt's pictures."""
    return subject_fidelity(judge, images)


def prompt_context(prompt: str) -> str | None:
    """The context a prompt asks for: "a photo of sks ball on snow" -> "snow"; None if none."""
    for context, words in toyworld.CONTEXTS.items():
        if words in prompt:
            return context
    return None


def scores(judge: Judge, images_by_prompt: dict[str, list[Image.Image]]) -> dict[str, dict]:
    """For each prompt, the fraction of its pictures that show our subject ("subject") and, when
    the prompt names a context, the fraction set there ("context"): one table for a lesson.

    scores(judge, {"a photo of sks ball on snow": a, "a photo of a ball": b})
    -> {"a photo of sks ball on snow": {"subject": 0.9, "context": 1.0},
        "a photo of a ball": {"subject": 0.0}}
    """
    table = {}
    for prompt, images in images_by_prompt.items():
        answers = judge.predict(images)
        row = {"subject": _fraction([a["is_subject"] for a in answers])}
        context = prompt_context(prompt)
        if context is not None:
            row["context"] = _fraction([a["context"] == context for a in answers])
        table[prompt] = row
    return table


def evaluate(pipeline, judge: Judge, prompts: list[str], n: int = 16, resolution: int = 64,
             steps: int = 25, guidance: float = 7.5, seed: int = 0):
    """Draw `n` pictures per prompt (seeds seed..seed+n-1, the same for every prompt and model)
    and score them: returns ({prompt: pictures}, scores(...))."""
    from .sample import generate

    seeds = list(range(seed, seed + n))
    images = {p: generate(pipeline, [p] * n, seeds, resolution, steps, guidance, batch_size=16)
              for p in prompts}
    return images, scores(judge, images)
