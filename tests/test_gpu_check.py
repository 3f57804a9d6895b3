"""benchmarks/gpu_check.py, run on the CPU with the tiny model: every line it prints is JSON, with
the figures its docstring promises. On a GPU the same script measures SD 1.5."""

import json

import pytest

from dreamlab import memory

LADDER = list(memory.rungs())
# A full fine-tune in fp16 (run here in bf16, with its resume check) and the 8-bit Adam rungs
# (bitsandbytes needs CUDA: they must say so and let the script go on). Found by their settings,
# so that the test follows the ladder when it changes.
FULL = next(i for i, (_, o) in enumerate(LADDER)
            if o["mixed_precision"] == "fp16" and not (o["lora"] or o["use_8bit_adam"]))
EIGHT_BIT_LABEL = next(label for label, o in LADDER if o["use_8bit_adam"])
EIGHT_BIT = [i for i, (label, _) in enumerate(LADDER) if EIGHT_BIT_LABEL.lower() in label.lower()]


@pytest.fixture(scope="module")
def printed(run_script) -> list[dict]:
    out = run_script("benchmarks/gpu_check.py", "--device", "cpu", "--size", "tiny", "--resolution", "64",
                     "--steps", "2", "--class-images", "8", "--threads", "1",
                     "--rungs", FULL, EIGHT_BIT_LABEL)  # an index, and a label
    return [json.loads(line) for line in out.strip().splitlines()]  # nothing else on stdout


def rungs(printed) -> dict[int, dict]:
    return {row["rung"]: row for row in printed if row["measure"] == "rung"}


def test_it_says_what_ran_and_times_the_class_images(printed):
    setup, images = printed[:2]
    assert setup["measure"] == "setup" and setup["device"] == "cpu" and setup["gpu"] is None
    assert setup["rungs"] == sorted([FULL, *EIGHT_BIT]) and setup["ladder"] == [label for label, _ in LADDER]
    assert images["measure"] == "class_images" and images["images"] == 8 and images["timed_batches"] == 1
    assert images["images_per_s"] > 0 and images["batch_s"] > 0 and images["dtype"] == "float32"
    assert images["scheduler"] == "DPMSolverMultistepScheduler" and images["inference_steps"] == 25
    assert sorted(rungs(printed)) == setup["rungs"] and len(printed) == 2 + len(setup["rungs"])


def test_a_rung_that_ran_has_its_estimate_time_and_resume_check(printed):
    row = rungs(printed)[FULL]
    assert row["label"] == LADDER[FULL][0] and row["options"] == LADDER[FULL][1]
    assert "skipped" not in row
    assert row["estimate_gib"] > 0 and row["step_s"] > 0 and row["timed_steps"] == 2 and row["train_s"] > 0
    assert row["trained_params"] == row["estimate_trained_params"] > 0  # the planner trains what train() does
    # no CUDA memory to measure on a CPU, and fp16 ran as bf16: the line says both
    assert row["peak_allocated_gib"] is None and row["ratio"] is None
    assert row["mixed_precision"] == "bf16" and "bf16" in row["note"] and "CPU" in row["note"]
    assert isinstance(row["resume_exact"], bool) and isinstance(row["resume_losses_equal"], bool)
    assert row["resume_max_weight_diff"] >= 0 and row["resume_exact"] == (row["resume_max_weight_diff"] == 0)
    assert row["resume_s"] > 0 and "resume_skipped" not in row


def test_a_rung_that_cannot_run_says_why_and_the_script_goes_on(printed):
    for index in EIGHT_BIT:
        row = rungs(printed)[index]
        assert row["options"]["use_8bit_adam"] and row["estimate_gib"] > 0
        assert "CUDA" in row["skipped"]  # why: bitsandbytes runs on CUDA GPUs only
        assert "step_s" not in row and "resume_exact" not in row
