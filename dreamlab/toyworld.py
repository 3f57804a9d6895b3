"""A toy world small enough to watch DreamBooth work on a CPU.

Real Stable Diffusion learned from billions of captioned photos. The toy Stable Diffusion
(scripts/pretrain_toy.py) learns from this world instead: 64 px pictures of one object,

    4 shapes   ball, box, star, ring
    5 colours  red, green, blue, yellow, purple
    3 patterns plain, striped (white bands), dotted (white dots)
    4 contexts grass, snow, night sky, beach

at a random size and position, each with its caption: "a photo of a red striped box on snow".
Pictures are drawn on the fly with PIL (about 30 microseconds each), so the world never runs out.

The DreamBooth subject is something the world never shows: a red ball with bold white stripes.
Stripes exist (on boxes, stars and rings) and red balls exist, but `random_scene` never draws a
striped ball, so the toy model has never seen one: DreamBooth must teach it. `subject_photos()` draws the
subject's few "photos" (scripts/make_toy_subject.py saves them to dreamlab/assets/instance/striped-ball).
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("ball", "box", "star", "ring")
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (240, 200, 30), "purple": (140, 50, 180)}
PATTERNS = ("plain", "striped", "dotted")  # "plain" is the default: captions leave it out
CONTEXTS = {"grass": "on grass", "snow": "on snow", "night sky": "in the night sky",
            "beach": "on the beach"}  # context -> the words the caption ends with
PATTERN_COLOUR = (250, 250, 250)  # stripes and dots are white

# The DreamBooth subject, and the (shape, pattern) pair the world never shows because of it.
SUBJECT_NAME, SUBJECT_CLASS = "striped-ball", "ball"
SUBJECT_CONTEXTS = ("grass", "beach")  # where its photos were "taken"; snow and night sky are new
UNSEEN = {("ball", "striped")}


@dataclass
class Scene:
    shape: str = "ball"
    colour: str = "red"
    context: str = "grass"
    pattern: str = "plain"
    size: float = 0.5  # the object's width, as a fraction of the picture's
    position: tuple[float, float] = (0.5, 0.5)  # the object's centre (x, y), fractions
    seed: int = 0  # which blades of grass, stars, waves: the background's details

    def caption(self, colour: bool = True, pattern: bool = True, context: bool = True) -> str:
        """The caption, e.g. "a photo of a red striped box on snow"; False leaves that part out."""
        words = ["a photo of a"]
        if colour:
            words.append(self.colour)
        if pattern and self.pattern != "plain":
            words.append(self.pattern)
        words.append(self.shape)
        if context:
            words.append(CONTEXTS[self.context])
        return " ".join(words)


def random_scene(rng: np.random.Generator) -> Scene:
    """A random scene of the world (never a striped ball: that is the subject's secret)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    patterns = [p for p in PATTERNS if (shape, p) not in UNSEEN]
    size = float(rng.uniform(0.3, 0.6))
    r = size / 2
    return Scene(shape=shape, colour=list(COLOURS)[rng.integers(len(COLOURS))],
                 context=list(CONTEXTS)[rng.integers(len(CONTEXTS))],
                 pattern=patterns[rng.integers(len(patterns))], size=size,
                 position=(float(rng.uniform(r, 1 - r)), float(rng.uniform(r, 1 - r))),
                 seed=int(rng.integers(2**31)))


def pretraining_caption(scene: Scene, rng: np.random.Generator, p_drop: float = 0.3,
                        p_empty: float = 0.1) -> str:
    """The caption the toy model is pretrained with: words dropped at random, so that it also
    learns what shorter prompts mean ("a photo of a ball" = a ball of any colour, anywhere).

    Colour, pattern and context are each left out with probability `p_drop`; the whole caption
    becomes "" with probability `p_empty`, which teaches the unconditional prediction that
    classifier-free guidance needs (the pipeline's negative prompt is "").
    """
    if rng.random() < p_empty:
        return ""
    keep_colour, keep_pattern, keep_context = rng.random(3) >= p_drop
    return scene.caption(colour=keep_colour, pattern=keep_pattern, context=keep_context)


# ---- drawing -----------------------------------------------------------------------------

def _speckle(draw: ImageDraw.ImageDraw, rng, size: int, n: int, colours, length: int = 1,
             top: int = 0) -> None:
    """Scatter `n` short marks (dots, or vertical strokes when length > 1) below row `top`."""
    xs, ys, cs = rng.integers(0, size, n), rng.integers(top, size, n), rng.integers(0, len(colours), n)
    for x, y, c in zip(xs, ys, cs):
        draw.line([(x, y), (x, y - length + 1)], fill=colours[c])


@lru_cache(maxsize=256)
def _background(context: str, size: int, variant: int) -> Image.Image:
    """One of 16 textures per context, made once and cached (rendering then only copies)."""
    rng = np.random.default_rng([variant, size, list(CONTEXTS).index(context)])
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    if context == "grass":  # green, with darker and lighter blades
        image.paste((70, 150, 60), (0, 0, size, size))
        _speckle(draw, rng, size, size * 6, [(40, 110, 40), (100, 180, 80), (55, 130, 50)], length=3)
    elif context == "snow":  # white ground under a pale blue sky, bluish flakes of shade
        image.paste((200, 225, 245), (0, 0, size, size // 3))
        image.paste((245, 248, 252), (0, size // 3, size, size))
        _speckle(draw, rng, size, size * 2, [(215, 230, 245), (225, 235, 250)], top=size // 3)
    elif context == "night sky":  # dark blue, scattered stars, a moon
        for y in range(size):  # darker towards the top
            draw.line([(0, y), (size, y)], fill=(10, 15, 40 + 30 * y // size))
        _speckle(draw, rng, size, size // 2, [(255, 255, 255), (200, 200, 150)])
        mx, my, mr = rng.integers(size // 8, size - size // 8), size // 8, max(2, size // 16)
        draw.ellipse([mx - mr, my - mr, mx + mr, my + mr], fill=(240, 240, 210))
    elif context == "beach":  # sea above, sand below, a line of surf between
        horizon = size * 2 // 5 + int(rng.integers(-size // 16, size // 16 + 1))
        image.paste((40, 120, 190), (0, 0, size, horizon))
        image.paste((230, 205, 150), (0, horizon, size, size))
        _speckle(draw, rng, size, size * 2, [(210, 185, 130), (245, 225, 175)], top=horizon)
        draw.line([(0, horizon), (size, horizon)], fill=(240, 250, 255), width=max(1, size // 32))
    return image


def _silhouette(shape: str, cx: float, cy: float, r: float) -> tuple[str, list]:
    """The shape as PIL drawing arguments: ("ellipse" | "polygon", points)."""
    if shape in ("ball", "ring"):
        return "ellipse", [cx - r, cy - r, cx + r, cy + r]
    if shape == "box":
        s = r * 0.9
        return "polygon", [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    # a star: five points; the inner corners at 0.45 of the outer radius
    angles = np.pi * (np.arange(10) / 5 - 0.5)
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return "polygon", list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw `scene` as a `size` x `size` RGB picture (the same scene always gives the same picture)."""
    for name, known in (("shape", SHAPES), ("colour", COLOURS), ("pattern", PATTERNS), ("context", CONTEXTS)):
        if getattr(scene, name) not in known:
            raise ValueError(f"unknown {name} {getattr(scene, name)!r}; choose one of {', '.join(known)}")
    image = _background(scene.context, size, scene.seed % 16).copy()
    cx, cy = scene.position[0] * size, scene.position[1] * size
    r = scene.size * size / 2
    kind, points = _silhouette(scene.shape, cx, cy, r)

    # The object's silhouette as a mask: patterns are drawn over a whole square of colour,
    # then the mask cuts out the shape (a ring is a disc with a hole).
    mask = Image.new("L", (size, size), 0)
    m = ImageDraw.Draw(mask)
    getattr(m, kind)(points, fill=255)
    if scene.shape == "ring":
        h = r * 0.55
        m.ellipse([cx - h, cy - h, cx + h, cy + h], fill=0)
    paint = Image.new("RGB", (size, size), COLOURS[scene.colour])
    p = ImageDraw.Draw(paint)
    period = max(4.0, r * 2 / 3)  # three stripes (or rows of dots) across the object: bold
    if scene.pattern == "striped":  # horizontal white bands, half the period wide
        for y in np.arange(cy - r + period / 4, cy + r, period):
            p.rectangle([cx - r, y, cx + r, y + period / 2 - 1], fill=PATTERN_COLOUR)
    elif scene.pattern == "dotted":
        d = period / 5
        for y in np.arange(cy - r + period / 2, cy + r, period):
            for x in np.arange(cx - r + period / 2, cx + r, period):
                p.ellipse([x - d, y - d, x + d, y + d], fill=PATTERN_COLOUR)
    image.paste(paint, (0, 0), mask)

    # A dark edge, so a green ball stays visible on grass and a blue one at night.
    edge = tuple(c // 3 for c in COLOURS[scene.colour])
    draw = ImageDraw.Draw(image)
    getattr(draw, kind)(points, outline=edge, width=1)
    if scene.shape == "ring":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], outline=edge, width=1)
    return image


def subject_photos(n: int = 5, context: str | tuple[str, ...] = SUBJECT_CONTEXTS,
                   size: int = 64, seed: int = 0) -> list[Image.Image]:
    """`n` "photos" of the DreamBooth subject (a red ball with bold white stripes), taking turns
    through `context`, at varied sizes and positions. The same arguments give the same photos."""
    contexts = (context,) if isinstance(context, str) else tuple(context)
    rng = np.random.default_rng(1000 + seed)
    photos = []
    for i in range(n):
        s = float(rng.uniform(0.45, 0.6))  # a subject photo is framed on the subject
        position = tuple(float(v) for v in rng.uniform(s / 2 + 0.05, 1 - s / 2 - 0.05, 2))
        photos.append(render(Scene("ball", "red", contexts[i % len(contexts)], "striped", s, position,
                                   seed=int(rng.integers(2**31))), size))
    return photos


def dreambooth_settings(**overrides):
    """The lessons' offline fine-tune: the toy model learns the striped ball in CPU minutes.

    The photos' caption files name their context ("a photo of sks ball on grass"), so the
    background is put down to "on grass" rather than to "sks ball". Batches of 4 photos (and 4
    class images) and a cosine decay of the learning rate to 0. The text encoder stays frozen
    but for one word: "sks" learns its own embedding (train_identifier, at 5e-3) while the UNet
    learns slowly (5e-5). The word then carries the subject, and the pretrained text encoder
    composes it with "on snow" as with any other word; the UNet, barely changed, keeps drawing
    contexts as it learned to. Training the whole text encoder instead (1e-3) tied the subject
    to its photos' contexts: in the night sky 0.99, on snow 0 (its red turned purple); with the
    UNet and text encoder both at 3e-4 the UNet memorised the photos (benchmarks/toy_dreambooth.py
    measures all of this; see benchmarks/README.md).
    """
    from .settings import ASSETS, OUTPUT, Settings

    values = dict(model=str(ASSETS / "toy-sd"), instance_dir=str(ASSETS / "instance" / SUBJECT_NAME),
                  instance_prompt=f"a photo of sks {SUBJECT_CLASS}",
                  class_prompt=f"a photo of a {SUBJECT_CLASS}",
                  class_dir=str(OUTPUT / "toy-class-images"), output_dir=str(OUTPUT / "toy-dreambooth"),
                  device="cpu", resolution=64, center_crop=True, max_train_steps=400,
                  train_batch_size=4, learning_rate=5e-5, lr_scheduler="cosine",
                  train_identifier=True, identifier_lr=5e-3, num_class_images=100,
                  sample_batch_size=16, num_inference_steps=25, guidance_scale=7.5)
    values.update(overrides)
    return Settings(**values)
