"""The settings form: its widgets make the Settings, its presets set them, its memory verdict follows
them, and the code it shows makes the same Settings. Run on ipywidgets 8 and on Colab's 7.7.1."""

import dataclasses
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from dreamlab import DreamlabError, Settings, form, memory, offline_model, set_language
from dreamlab.colab import COURSE_GIB, T4_GIB
from dreamlab.settings import SD15, setting_names

ROOT = Path(__file__).resolve().parent.parent
IPYWIDGETS_7 = ROOT / "build" / "ipywidgets-7.7.1"  # Colab's version, installed by the last test


@pytest.fixture
def start(offline_path):
    """Settings on the small random model at 64 px: an estimate takes a fraction of a second."""
    return Settings(model=offline_path, resolution=64, device="cpu")


def memory_options(values) -> dict:
    return {k: values[k] for k in memory.DEFAULTS}


def test_every_memory_option_and_only_settings_are_on_the_form():
    assert set(memory.DEFAULTS) <= set(form.FIELDS)  # the verdict depends on nothing the form hides
    assert set(form.FIELDS) <= set(setting_names()) and len(set(form.FIELDS)) == len(form.FIELDS)
    assert all(en and pt for _, group in form.GROUPS for _, en, pt in group)


def test_changing_the_widgets_changes_the_settings(start):
    f = form.SettingsForm(start)
    assert f.settings == start and f.code == "settings = dataclasses.replace(settings)"
    f.fields["max_train_steps"].value = 800
    f.fields["learning_rate"].value = 10**-5.7  # a notch of the slider: 1.995e-06
    f.fields["lr_scheduler"].value = "cosine"
    f.fields["lora"].value = True
    f.fields["validation_prompts"].value = "a photo of sks dog\n\n  on the beach \n"
    f.fields["validation_steps"].value = 100
    f.fields["guidance_scale"].value = 5.0
    s = f.settings
    assert (s.max_train_steps, s.learning_rate, s.lr_scheduler, s.lora) == (800, 2e-6, "cosine", True)
    assert s.validation_prompts == ["a photo of sks dog", "on the beach"] and s.validation_steps == 100
    assert s.guidance_scale == 5.0 and s.resolution == 64 and s.instance_dir == start.instance_dir
    assert start.max_train_steps == 400  # the starting settings are left as they were


def test_the_code_shown_makes_the_same_settings(start):
    f = form.SettingsForm(start)
    f.fields["learning_rate"].value = 10**-4
    f.fields["lora"].value = True
    f.fields["prior_loss_weight"].value = 0.5
    f.fields["validation_prompts"].value = "a photo of sks dog on the beach\na photo of sks dog in the snow"
    f.fields["validation_steps"].value = 50
    f.fields["num_class_images"].value = 20
    code = f.code
    assert html.escape(code) in f.code_view.value
    assert "lora=True" in code and "learning_rate=0.0001" in code and "resolution" not in code
    assert len(code.splitlines()) > 1  # wrapped
    names = {"dataclasses": dataclasses, "settings": start}
    exec(code, names)
    assert names["settings"] == f.settings != start


def test_presets_set_the_fields_but_not_the_samples_and_checkpoints(start, monkeypatch):
    # SD 1.5's estimate takes seconds, and this test is about the fields: every verdict here is
    # the estimate for `start` (made once)
    real = memory.estimate
    monkeypatch.setattr(memory, "estimate", lambda **_: real(**memory_options(start.to_dict())))
    f = form.SettingsForm(dataclasses.replace(start, validation_prompts=["a photo of sks dog"],
                                              validation_steps=10, compact_checkpoints=True))
    for key, preset in f.presets.items():
        f.buttons[key].click()
        values = f.values()
        assert {k: v for k, v in values.items() if k not in form.KEPT} == {
            k: getattr(preset, k) for k in form.FIELDS if k not in form.KEPT}, key
        assert values["validation_prompts"] == ["a photo of sks dog"] and values["validation_steps"] == 10
        assert values["compact_checkpoints"]
    f.apply_preset("t4-lora")
    assert (f.values()["lora"], f.values()["lora_rank"], f.values()["model"]) == (True, 8, SD15)
    f.fields["mixed_precision"].value = "no"  # (fp16 needs a GPU) and on Drive, as on Colab:
    assert "compact_checkpoints=True: is for full fine-tunes" in f.problem.value  # the box to untick
    f.apply_preset("t4-full")
    values = f.values()
    assert not values["lora"] and values["step_in_backward"] and values["learning_rate"] == 5e-6
    if not torch.cuda.is_available():  # a T4 preset trains in fp16: a GPU's, as the red line says
        assert "mixed_precision='fp16' needs a GPU" in html.unescape(f.problem.value)
        with pytest.raises(DreamlabError, match="fp16"):
            _ = f.settings
    f.apply_preset("cpu-toy")
    s = f.settings  # the toy preset is valid on a CPU
    assert s.model == offline_model() and s.train_identifier and s.resolution == 64
    assert s.instance_dir == start.instance_dir  # the subject is not a preset's
    with pytest.raises(DreamlabError, match="t4-full"):
        f.apply_preset("T4")


def test_the_verdict_follows_the_memory_fields(start, monkeypatch):
    real, calls = memory.estimate, []
    monkeypatch.setattr(memory, "estimate", lambda **o: calls.append(o) or real(**o))
    full = real(**memory_options(start.to_dict()))["total"]
    lora = real(**memory_options({**start.to_dict(), "lora": True}))["total"]
    assert lora < full
    gpu = (full + lora) / 2 / (1 - form.MARGIN)  # a GPU that holds the LoRA run, not the full one
    monkeypatch.setattr(memory, "gpu_memory_gib", lambda: gpu)

    f = form.SettingsForm(start)
    assert "does not fit" in f.memory.value and "this GPU" in f.memory.value
    estimated = len(calls)
    f.fields["learning_rate"].value = 10**-5
    f.fields["max_train_steps"].value = 100
    assert len(calls) == estimated  # nothing the memory depends on changed: no new estimate
    f.fields["lora"].value = True
    assert len(calls) == estimated + 1
    assert f"fits: {form.gib(lora)} of {form.gib(gpu)} GiB" in f.memory.value

    # The way out the verdict gives, applied, fits
    f = form.SettingsForm(start)
    suggestion = re.search(r"try (.*) \(", html.unescape(f.memory.value)).group(1)
    for name, value in re.findall(r"(\w+)=('?\w+'?)", suggestion):
        f.fields[name].value = eval(value)
    assert "fits:" in f.memory.value and "does not fit" not in f.memory.value
    # Within a GPU's size, yet not within what CUDA leaves of it: the verdict says why
    fits, text = form.memory_verdict(memory_options(start.to_dict()), full / 0.97)
    assert fits is False
    assert f"does not fit: {form.gib(full)} of {form.gib(full / 0.97)} GiB (the last 5% is for CUDA)" in text


def test_the_t4_full_preset_fits_colabs_t4(monkeypatch):
    """The one test that estimates SD 1.5 (a few seconds): lesson 3's settings on Colab."""
    monkeypatch.setattr(memory, "gpu_memory_gib", lambda: None)  # no GPU: the verdict is for a T4
    f = form.SettingsForm(Settings(device="cpu"))
    f.apply_preset("t4-full")
    need = memory.estimate(**memory_options(f.values()))["total"]  # the verdict's, cached
    assert need < COURSE_GIB
    verdict = html.unescape(f.memory.value)
    assert f"fits: {need:.1f} of {T4_GIB:.1f} GiB" in verdict and "Colab's T4" in verdict
    assert "SD 1.5, 512 px" in verdict


def test_an_invalid_value_shows_its_message_not_a_traceback(start):
    f = form.SettingsForm(start)
    f.fields["max_train_steps"].value = 0
    assert "max_train_steps=0: must be at least 1" in f.problem.value
    with pytest.raises(DreamlabError, match="max_train_steps=0"):
        _ = f.settings
    f.fields["max_train_steps"].value = 400
    f.fields["resolution"].value = 60
    assert "multiple of 8" in f.problem.value and "no estimate" in f.memory.value
    f.fields["resolution"].value = 64
    assert f.problem.value == "" and "fits" in f.memory.value
    f.fields["validation_steps"].value = 50  # and no validation_prompts
    assert "give validation_prompts too" in f.problem.value
    f.fields["model"].value = "someone/another-model"  # the planner cannot build it offline
    assert "no estimate" in f.memory.value and "another-model" in f.memory.value
    with pytest.raises(DreamlabError, match="learning_rate=0.05"):  # the slider cannot hold it
        form.SettingsForm(dataclasses.replace(start, learning_rate=0.05))
    with pytest.raises(DreamlabError, match="lr_scheduler='step'"):
        form.SettingsForm(dataclasses.replace(start, lr_scheduler="step"))
    with pytest.raises(DreamlabError, match="give it a dreamlab.Settings"):
        form.SettingsForm({"learning_rate": 1e-5})


def test_the_form_speaks_the_lessons_language(start):
    set_language("pt-BR")
    try:
        f = form.SettingsForm(start)
    finally:
        set_language("en")
    assert f.buttons["t4-full"].description == "T4 ajuste fino completo"
    assert "cabe" in f.memory.value and "em código" in f.code_view.value
    explanations = [row.children[1].value for tab in f.tabs.children for row in tab.children]
    assert any("codificador de texto" in text for text in explanations)
    english = form.SettingsForm(start).titles
    assert english == ["Model", "Training", "Prior preservation", "Memory", "Checkpoints", "Samples"]
    assert f.titles == ["Modelo", "Treino", "Preservação", "Memória", "Checkpoints", "Amostras"]


def test_settings_form_shows_the_form(start, monkeypatch):
    shown = []
    monkeypatch.setattr(form, "display", shown.append)
    f = form.settings_form(start)
    assert shown == [f.widget] and f.tabs in f.widget.children


def ipywidgets_7() -> Path:
    """Colab's ipywidgets 7.7.1 (and the one package it imports that 8 dropped) under build/, once."""
    if not (IPYWIDGETS_7 / "ipywidgets" / "__init__.py").is_file():
        IPYWIDGETS_7.parent.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=IPYWIDGETS_7.parent, prefix="ipywidgets-"))
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                               str(folder), "ipywidgets==7.7.1", "ipython_genutils==0.2.0"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode:
            shutil.rmtree(folder)
            pytest.fail(f"pip could not install ipywidgets 7.7.1 (it needs PyPI):\n{done.stderr[-2000:]}")
        try:
            folder.rename(IPYWIDGETS_7)
        except OSError:  # another test run was first
            shutil.rmtree(folder)
    return IPYWIDGETS_7


def test_the_same_tests_pass_on_colabs_ipywidgets_7():
    run_here = ("import sys, ipywidgets, pytest; "
                "assert ipywidgets.__version__ == '7.7.1', ipywidgets.__file__; "
                f"sys.exit(pytest.main([{__file__!r}, '-q', '-p', 'no:xdist', '-p', 'no:cacheprovider', "
                "'-k', 'not colabs']))")  # all but this test and SD 1.5's
    path = os.pathsep.join(filter(None, [str(ipywidgets_7()), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", run_here], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    expected = len([name for name in globals() if name.startswith("test_") and "colabs" not in name])
    assert f"{expected} passed" in done.stdout, done.stdout[-1000:]
