"""DreamBooth works in the toy world, as the judge sees it: a short, seeded version of
benchmarks/toy_dreambooth.py that checks the direction of each effect, not its size."""

import pytest

from dreamlab import load_model, toyworld, train
from dreamlab.judge import evaluate, load_judge

SUBJECT_PROMPT = "a photo of sks ball on grass"
CLASS_PROMPT = "a photo of a ball"


@pytest.fixture(scope="module")
def runs(toy_path, tmp_path_factory):
    """The judge's scores for the base model and for DreamBooth with and without prior
    preservation, all with the same seeds."""
    tmp = tmp_path_factory.mktemp("toy-dreambooth")
    judge = load_judge()
    results = {}
    for name in ("base", "prior", "no prior"):
        s = toyworld.dreambooth_settings(model=toy_path, class_dir=str(tmp / "class"),
                                         output_dir=str(tmp / "out"), prior_preservation=name == "prior",
                                         num_class_images=CLASS_IMAGES)
        sd = load_model(toy_path) if name == "base" else train(s, save=False).sd
        images, table = evaluate(sd.pipeline(), judge, [SUBJECT_PROMPT, CLASS_PROMPT], n=16,
                                 resolution=s.resolution, steps=s.num_inference_steps,
                                 guidance=s.guidance_scale, seed=1000)
        # Partial drift: "a ball" taking the subject's colour, red (a fifth of balls are red)
        table["red balls"] = sum(a["colour"] == "red" for a in judge.predict(images[CLASS_PROMPT])) / 16
        results[name] = table
    return results


CLASS_IMAGES = 48


def test_fine_tuning_teaches_the_subject(runs):
    base = runs["base"][SUBJECT_PROMPT]["subject"]
    tuned = runs["prior"][SUBJECT_PROMPT]["subject"]
    assert base <= 0.1, base
    assert tuned >= base + 0.25, (base, tuned)


def test_prior_preservation_reduces_language_drift(runs):
    # The whole subject rarely leaks into "a ball" in a short run; its colour does, without prior
    with_prior, without = runs["prior"]["red balls"], runs["no prior"]["red balls"]
    assert with_prior < without, (with_prior, without)
    assert runs["prior"][CLASS_PROMPT]["subject"] <= runs["no prior"][CLASS_PROMPT]["subject"]
