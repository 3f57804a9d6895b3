"""benchmarks/colab_budget.py: the Colab table of benchmarks/README.md (GPU memory, Drive, T4 minutes
per lesson), and memory.estimate_sampling, which gives its figures for drawing pictures."""

import re

import pytest

from dreamlab import memory

CELL = re.compile(r"^([\d.]+) \((est\.|measured)[^)]*\)$")  # "11.2 (est.)", "3.97 (est., at the end)"


@pytest.fixture(scope="module")
def output(run_script, dreambooth_photos) -> str:
    return run_script("benchmarks/colab_budget.py", "--photos", dreambooth_photos)


def table_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]  # less the header


def test_one_row_per_lesson_and_a_total_every_figure_labelled(output):
    rows = table_rows(output)
    assert [row[0].split()[0] for row in rows] == ["1", "2", "3", "4", "5", "total"]
    for row in rows:
        assert len(row) == 6
        for cell in row[1:]:
            assert CELL.match(cell), f"unlabelled figure {cell!r} in {row}"


def test_gpu_memory_and_what_it_is_made_of(output):
    rows = table_rows(output)
    gpu = [float(CELL.match(row[1])[1]) for row in rows]
    assert all(2 < gib < 13 for gib in gpu)  # SD 1.5 in fp16 alone is 2 GiB; the course's budget is 13
    assert gpu[-1] == max(gpu[:-1])  # the total row gives the most
    assert "the step by hand" in output  # lesson 3's peak counts its step by hand
    assert "CUDA context 0.5 GiB" in output


def test_drive_and_minutes_add_up(output):
    rows = table_rows(output)
    kept, peak, with_bin, minutes = ([float(CELL.match(row[i])[1]) for row in rows] for i in (2, 3, 4, 5))
    assert kept[0] == 0  # lesson 1 writes nothing to Drive
    assert all(k <= p <= b for k, p, b in zip(kept, peak, with_bin))
    assert kept[-1] == kept[-2]  # the total's "kept" is the end of lesson 5
    assert minutes[-1] == pytest.approx(sum(minutes[:-1]), abs=0.3)  # (each shown to 0.1)


def test_rates_assumptions_and_verdicts_are_printed(output):
    assert "optimization/torch2.0.md" in output and "6.9 it/s at batch 1, 1.79 it/s at batch 4" in output
    assert "fast-stable-diffusion issue #2330" in output and "0.85 it/s" in output
    assert "assumed: hub downloads" in output
    assert re.search(r"class image's PNG [\d.]+ MB \(measured on \d+ photos", output)
    verdicts = [line for line in output.splitlines() if re.search(r": (met|NOT met) \(", line)]
    assert len(verdicts) == 4  # GPU memory, Drive at any moment, Drive at the end, T4 minutes


def test_sampling_memory_grows_with_batch_and_resolution(offline_path):
    def need(**options):
        return memory.estimate_sampling(offline_path, **{"resolution": 64, "batch": 1, **options})

    small, four = need(), need(batch=4)
    assert four["denoising"] > small["denoising"] and four["decoding"] > small["decoding"]
    assert four["total"] > small["total"] and need(resolution=128)["total"] > small["total"]
    assert need(batch=4, guidance=False)["denoising"] < four["denoising"]  # half the UNet's batch
    assert four["weights"] == small["weights"]
    assert need(dtype="no")["weights"] == pytest.approx(2 * small["weights"], rel=0.01)  # float32


def test_sd15_sampling_memory_is_plausible():
    need = memory.estimate_sampling(resolution=512, batch=4)
    # 1,066 M parameters in fp16: 1.99 GiB; diffusers reports SD 1.5 in fp16 drawing in 3 to 5 GB
    assert need["weights"] == pytest.approx(2 * (859_520_964 + 83_653_863 + 123_060_480) / 2**30, rel=0.01)
    assert 3 * 1e9 / 2**30 < need["total"] < 5 * 1e9 / 2**30
    assert need["total"] == pytest.approx(need["weights"] + max(need["denoising"], need["decoding"]))
