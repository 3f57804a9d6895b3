import numpy as np
import pytest
from PIL import Image

from dreamlab import toyworld
from dreamlab.settings import ASSETS
from dreamlab.toyworld import Scene, pretraining_caption, random_scene, render, subject_photos


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_size_mode_and_determinism(size):
    for shape in toyworld.SHAPES:
        for context in toyworld.CONTEXTS:
            scene = Scene(shape, "blue", context, "dotted", 0.5, (0.4, 0.6), seed=7)
            image = render(scene, size)
            assert image.size == (size, size) and image.mode == "RGB"
            assert image.tobytes() == render(scene, size).tobytes()


def test_object_colour_hole_and_pattern():
    ball = pixels(render(Scene("ball", "red", "snow", size=0.5)))
    assert tuple(ball[32, 32]) == toyworld.COLOURS["red"]  # the centre of a plain ball
    ring = pixels(render(Scene("ring", "red", "night sky", size=0.5)))
    assert ring[32, 32].sum() < 200  # the ring's hole shows the dark sky
    striped = pixels(render(Scene("box", "purple", "night sky", "striped", size=0.5)))
    inside = striped[20:44, 20:44].reshape(-1, 3)
    assert (inside == toyworld.PATTERN_COLOUR).all(1).mean() > 0.3  # bold white bands


def test_patterns_are_clipped_to_the_shape():
    for shape in toyworld.SHAPES:
        for pattern in ("striped", "dotted"):
            plain = pixels(render(Scene(shape, "green", "grass", "plain", 0.4, (0.3, 0.7), seed=3)))
            patterned = pixels(render(Scene(shape, "green", "grass", pattern, 0.4, (0.3, 0.7), seed=3)))
            ys, xs = np.nonzero((plain != patterned).any(2))
            assert len(ys) > 0, (shape, pattern)
            # the object spans 0.1..0.5 across and 0.5..0.9 down: 6.4..32 px and 32..57.6 px
            assert xs.min() >= 6 and xs.max() <= 32 and ys.min() >= 32 and ys.max() <= 58


def test_contexts_look_different():
    means = {c: pixels(render(Scene("ball", "red", c, size=0.3, position=(0.8, 0.8)))).mean((0, 1))
             for c in toyworld.CONTEXTS}
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(means[a] - means[b]).max() > 30, (a, b)
    assert means["night sky"].max() < 80 and means["snow"].min() > 180
    assert means["grass"][1] > means["grass"][0] and means["grass"][1] > means["grass"][2]


def test_captions():
    assert Scene("ball", "red", "snow").caption() == "a photo of a red ball on snow"
    assert (Scene("box", "blue", "night sky", "striped").caption()
            == "a photo of a blue striped box in the night sky")
    ring = Scene("ring", "yellow", "beach", "dotted")
    assert ring.caption() == "a photo of a yellow dotted ring on the beach"
    assert ring.caption(colour=False, context=False) == "a photo of a dotted ring"
    assert ring.caption(pattern=False) == "a photo of a yellow ring on the beach"


def test_pretraining_captions_drop_words_and_sometimes_everything():
    scene = Scene("star", "purple", "beach", "dotted")
    full = scene.caption()
    rng = np.random.default_rng(0)
    captions = [pretraining_caption(scene, rng) for _ in range(2000)]
    assert 0.07 < captions.count("") / len(captions) < 0.13
    assert full in captions and "a photo of a star" in captions and "a photo of a purple star" in captions
    shorter = [c for c in captions if c and c != full]
    assert len(shorter) > len(captions) / 3
    for caption in set(captions) - {""}:
        assert caption.startswith("a photo of a ") and "star" in caption
        words = iter(full.split())
        assert all(w in words for w in caption.split()), caption  # full's words, in order


def test_random_scenes_cover_the_world_but_never_the_subject():
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng) for _ in range(5000)]
    pairs = {(s.shape, s.pattern) for s in scenes}
    assert (toyworld.SUBJECT_CLASS, "striped") not in pairs
    assert pairs == {(shape, p) for shape in toyworld.SHAPES for p in toyworld.PATTERNS} - toyworld.UNSEEN
    assert {s.colour for s in scenes} == set(toyworld.COLOURS)
    assert {s.context for s in scenes} == set(toyworld.CONTEXTS)
    for s in scenes:  # the whole object is in the picture
        assert 0.3 <= s.size <= 0.6
        assert all(s.size / 2 <= v <= 1 - s.size / 2 for v in s.position)
    assert len({(s.size, s.position, s.seed) for s in scenes}) == len(scenes)


def test_subject_photos_are_deterministic_and_striped_red_balls():
    photos = subject_photos(5)
    assert len(photos) == 5 and all(p.size == (64, 64) for p in photos)
    assert [p.tobytes() for p in photos] == [p.tobytes() for p in subject_photos(5)]
    for photo in photos:
        colours = pixels(photo).reshape(-1, 3)
        assert (colours == toyworld.COLOURS["red"]).all(1).sum() > 150
        assert (colours == toyworld.PATTERN_COLOUR).all(1).sum() > 150
    snow = subject_photos(3, "snow")
    assert len(snow) == 3 and all(pixels(p).mean() > 180 for p in snow)


def test_shipped_instance_photos_match_the_world():
    folder = ASSETS / "instance" / toyworld.SUBJECT_NAME
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [f"{i:02d}.png" for i in range(5)]
    for f, made in zip(files, subject_photos(5)):
        with Image.open(f) as shipped:
            assert shipped.size == (64, 64)
            # equal up to small drawing changes; rerun scripts/make_toy_subject.py if not
            assert np.abs(pixels(shipped.convert("RGB")) - pixels(made)).mean() < 3, f.name


def test_bad_names_are_refused():
    for bad in (Scene(shape="cube"), Scene(colour="pink"), Scene(context="moon"), Scene(pattern="checked")):
        with pytest.raises(ValueError, match="choose one of"):
            render(bad)
