"""DreamBooth works in the toy world, as the judge sees it: a short, seeded version of
benchmarks/toy_dreambooth.py (the lessons' default fine-tune, 16 pictures a prompt) that checks
the direction of each effect with a margin, not its size."""

import pytest

from dreamlab import load_model, toyworld, train
from dreamlab.judge import evaluate, load_judge

SUBJECT_PROMPT = "a photo of sks ball on grass"
NEW_CONTEXTS = ["a photo of sks ball in the night sky", "a photo of sks ball on snow"]  # never shown
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
                                         output_dir=str(tmp / "out"), prior_preservation=name == "prior")
        sd = load_model(toy_path) if name == "base" else train(s, save=False).sd
        _, table = evaluate(sd.pipeline(), judge, [SUBJECT_PROMPT, *NEW_CONTEXTS, CLASS_PROMPT], n=16,
                            resolution=s.resolution, steps=s.num_inference_steps,
                            guidance=s.guidance_scale, seed=1000)
        results[name] = table
    return results


def test_fine_tuning_teaches_the_subject(runs):
    # Measured with the 32 pictures of benchmarks/toy_dreambooth.py: base 0.0, with prior 1.0
    base = runs["base"][SUBJECT_PROMPT]["subject"]
    tuned = runs["prior"][SUBJECT_PROMPT]["subject"]
    assert base <= 0.1, base
    assert tuned >= base + 0.25, (base, tuned)


@pytest.mark.parametrize("prompt", NEW_CONTEXTS)
def test_the_subject_goes_where_it_was_never_shown(runs, prompt):
    # The pictures are set where the prompt asks, and with prior preservation most show the
    # subject (32 pictures, training seed 0: night sky 1.0, snow 0.81; before fine-tuning 0.06, 0)
    new, base = runs["prior"][prompt], runs["base"][prompt]
    assert new["context"] >= 0.8, new
    assert base["subject"] <= 0.15, base
    assert new["subject"] >= base["subject"] + 0.5, (new, base)


def test_prior_preservation_reduces_language_drift(runs):
    # Without prior, "a ball" sometimes becomes the striped ball (32 pictures, training seed 0:
    # 0.31); with it, at most half as often (measured 0.0)
    with_prior, without = runs["prior"][CLASS_PROMPT]["subject"], runs["no prior"][CLASS_PROMPT]["subject"]
    assert without >= 0.15, without
    assert with_prior <= without / 2, (with_prior, without)


def json_lines(stdout: str) -> list[dict]:
    import json

    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_the_toy_model_benchmark_prints_its_figures(run_script):
    (row,) = json_lines(run_script("benchmarks/toy_model.py", "--threads", "1", "--captions", "4",
                                   "--images", "2"))
    for key in ("shape", "colour", "pattern", "context", "all four", "a photo of a red dotted ball on snow"):
        assert 0.0 <= row[key] <= 1.0, (key, row)
    assert row["all four"] <= min(row[k] for k in ("shape", "colour", "pattern", "context"))


def test_the_toy_dreambooth_benchmark_averages_its_seeds(run_script, tmp_path):
    rows = json_lines(run_script("benchmarks/toy_dreambooth.py", "--threads", "1", "--steps", "2",
                                 "--images", "2", "--class-images", "2", "--seeds", "0", "1",
                                 "--prior", "on", "--no-base", "--class-dir", tmp_path))
    runs, (mean,), settings = rows[:2], rows[2:3], rows[3]
    assert [r["model"] for r in runs] == [f"dreambooth, prior preservation on, seed {s}" for s in (0, 1)]
    assert mean["model"] == "mean of 2 seeds, prior preservation on"
    for key in ("subject_fidelity", "prompt_fidelity", "language_drift"):
        assert abs(mean[key] - (runs[0][key] + runs[1][key]) / 2) <= 1e-3, (key, rows)
    assert settings["settings"]["max_train_steps"] == 2 and settings["settings"]["seeds"] == [0, 1]
