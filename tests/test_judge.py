from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dreamlab import toyworld
from dreamlab.judge import (
    HEADS,
    language_drift,
    load_judge,
    prompt_fidelity,
    scores,
    subject_fidelity,
)
from dreamlab.settings import ASSETS
from dreamlab.toyworld import Scene, random_scene, render

SEED = 4242  # not the training seed (0) nor its held-out seed (1000)


@pytest.fixture(scope="module")
def judge():
    return load_judge()


def balls(n: int, colours=tuple(toyworld.COLOURS), patterns=("plain", "dotted"), seed: int = SEED):
    """n balls of the given colours and patterns, in every context, at varied sizes and places."""
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(n):
        size = float(rng.uniform(0.3, 0.6))
        scenes.append(Scene("ball", colours[i % len(colours)], list(toyworld.CONTEXTS)[i % 4],
                            patterns[(i // 4) % len(patterns)], size,
                            tuple(float(v) for v in rng.uniform(size / 2, 1 - size / 2, 2)),
                            seed=int(rng.integers(2**31))))
    return scenes


def subjects(n: int, seed: int = SEED) -> list[Scene]:
    return balls(n, colours=("red",), patterns=("striped",), seed=seed)


def blur(images, radius=1.0):
    return [image.filter(ImageFilter.GaussianBlur(radius)) for image in images]


def test_shipped_files_are_small_and_pickle_free(judge):
    folder = ASSETS / "judge"
    assert sorted(f.name for f in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size < 1_000_000
    assert 30_000 < sum(p.numel() for p in judge.parameters()) < 120_000
    assert not judge.training and not any(p.requires_grad for p in judge.parameters())


def test_fresh_renders_are_classified_per_head(judge):
    rng = np.random.default_rng(SEED)
    scenes = [random_scene(rng) for _ in range(200)]
    answers = judge.predict([render(s) for s in scenes])
    for name in HEADS:
        right = np.mean([a[name] == getattr(s, name) for a, s in zip(answers, scenes)])
        assert right >= 0.95, (name, right)
    # the world never draws the subject, and the judge does not see it there either
    assert sum(a["is_subject"] for a in answers) <= 2


def test_subject_is_told_from_ordinary_balls(judge):
    subject = judge.predict([render(s) for s in subjects(40)])  # in all four contexts
    assert all(a["is_subject"] for a in subject)
    assert all((a["shape"], a["colour"], a["pattern"]) == ("ball", "red", "striped") for a in subject)
    ordinary = judge.predict([render(s) for s in balls(80)])  # plain or dotted, any colour
    assert not any(a["is_subject"] for a in ordinary)
    assert all(a["shape"] == "ball" for a in ordinary)
    # near misses: red alone, or stripes alone, are not our subject
    near = [replace(s, colour="blue") for s in subjects(20)] + [replace(s, shape="box") for s in subjects(20)]
    assert not any(a["is_subject"] for a in judge.predict([render(s) for s in near]))


def test_subject_fidelity(judge):
    photos = [Image.open(f) for f in sorted((ASSETS / "instance" / toyworld.SUBJECT_NAME).glob("*.png"))]
    assert len(photos) == 5
    assert subject_fidelity(judge, photos) == 1.0
    assert subject_fidelity(judge, toyworld.subject_photos(12, ("snow", "night sky"), seed=3)) >= 0.9
    assert subject_fidelity(judge, [render(s) for s in balls(40)]) <= 0.05
    assert subject_fidelity(judge, []) == 0.0


def test_prompt_fidelity(judge):
    snow = [render(s) for s in balls(40) if s.context == "snow"]
    assert len(snow) == 10
    assert prompt_fidelity(judge, snow, "snow") >= 0.9
    assert prompt_fidelity(judge, snow, "grass") <= 0.1
    everywhere = [render(s) for s in subjects(40)]  # a quarter in each context
    assert 0.2 <= prompt_fidelity(judge, everywhere, "night sky") <= 0.3
    with pytest.raises(ValueError, match="choose one of"):
        prompt_fidelity(judge, snow, "moon")


def test_language_drift(judge):
    assert language_drift(judge, [render(s) for s in balls(40, seed=SEED + 1)]) <= 0.05
    drifted = [render(s) for s in balls(20, seed=SEED + 1)] + [render(s) for s in subjects(20)]
    assert 0.4 <= language_drift(judge, drifted) <= 0.6


def test_blurry_pictures_like_the_toy_models(judge):
    """Generated pictures are soft: the judge was trained on blurred renders for them."""
    assert subject_fidelity(judge, blur(render(s) for s in subjects(20, seed=7))) >= 0.9
    assert language_drift(judge, blur(render(s) for s in balls(20, seed=7))) <= 0.05


def test_predict_answers_and_other_sizes(judge):
    scene = Scene("star", "yellow", "night sky", "dotted", 0.5, (0.5, 0.5), seed=1)
    (small,) = judge.predict([render(scene)])
    assert set(small) == set(HEADS) | {"is_subject", "p_subject"}
    assert (small["shape"], small["colour"], small["pattern"], small["context"]) == (
        "star", "yellow", "dotted", "night sky")
    assert small["is_subject"] is False and 0 <= small["p_subject"] < 0.5
    (large,) = judge.predict([render(scene, 128)])  # resized to the judge's 64 px
    assert {k: large[k] for k in HEADS} == {k: small[k] for k in HEADS}


def test_scores_table(judge):
    table = scores(judge, {"a photo of sks ball on snow": toyworld.subject_photos(4, "snow"),
                           "a photo of a ball": [render(s) for s in balls(8)]})
    assert table == {"a photo of sks ball on snow": {"subject": 1.0, "context": 1.0},
                     "a photo of a ball": {"subject": 0.0}}
