"""Every exercise says right to a right answer, gives a hint for a wrong one and for none, in
both languages, and never raises."""

import dataclasses

import pytest
import torch

from dreamlab import exercises as ex
from dreamlab import memory, set_language
from dreamlab.exercises import ANSWER_ME


@pytest.fixture(autouse=True)
def english():
    yield
    set_language("en")


def answers(check, right, wrong, capsys, *args, **kwargs):
    """check(right) is True and says so; check(wrong) and check(...) are False with a hint."""
    assert check(right, *args, **kwargs) is True
    assert capsys.readouterr().out.startswith("✅")
    assert check(wrong, *args, **kwargs) is False
    assert capsys.readouterr().out.startswith("❌")
    assert check(ANSWER_ME, *args, **kwargs) is False
    assert capsys.readouterr().out.startswith("✏️")


def test_lesson_0(capsys):
    answers(ex.prompt_in_a_new_place, "a photo of sks ball on snow", "a photo of a ball on snow", capsys,
            "sks", "ball", "on snow")
    answers(ex.any_member_of_the_class, "a photo of a ball", "a photo of sks ball", capsys,
            "a photo of a ball", "sks")


def test_lesson_1(capsys, sd):
    latents = torch.zeros(1, 4, 8, 8)
    answers(ex.numbers_in_the_latents, 256, 64, capsys, latents)
    prompt = "a photo of sks dog on the beach"
    answers(ex.tokens_in_a_prompt, len(sd.tokenizer(prompt).input_ids), 77, capsys, sd.tokenizer, prompt)
    acp = sd.noise_scheduler.alphas_cumprod
    crossing = int((acp.sqrt() - (1 - acp).sqrt()).abs().argmin())
    answers(ex.signal_equals_noise, crossing + 5, 999, capsys, acp)
    assert 300 < crossing < 700


def test_lesson_2(capsys, sd):
    answers(ex.examples_in_the_dataset, 50, 57, capsys, 7, 50)
    answers(ex.pixels_cut_off, 256, 400, capsys, 1200, 800, 512)
    answers(ex.my_identifier, "ohwx", "dog", capsys, sd.tokenizer)
    assert ex.my_identifier("sks", sd.tokenizer) is False  # the course's own: choose another


def test_lesson_3(capsys):
    import torch.nn.functional as F

    from dreamlab import Settings

    guess, target = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    loss = F.mse_loss(guess[2:], target[2:]).item()
    answers(ex.class_rows_loss, loss, F.mse_loss(guess, target).item(), capsys, guess, target, 2)
    assert ex.class_rows_loss(loss, guess[:2], target[:2], 2) is False  # no class rows: says why
    assert "prior preservation is off" in capsys.readouterr().out
    settings = Settings(learning_rate=3e-6, max_train_steps=400)
    answers(ex.settings_changed, dataclasses.replace(settings, learning_rate=1e-6, max_train_steps=200),
            dataclasses.replace(settings, learning_rate=1e-6), capsys, settings, learning_rate=1e-6,
            max_train_steps=200)
    answers(ex.hardest_timestep, 20, 900, capsys, lambda t: 1.0 - t / 1000)


def test_lesson_4(capsys):
    from types import SimpleNamespace

    prompts = ["a photo of sks dog on the beach", "a photo of a dog"]
    answers(ex.drift_prompt, "a photo of a dog", prompts[0], capsys, prompts, "sks")
    base = SimpleNamespace(unet=torch.nn.Linear(2, 2))
    models = {"with prior": SimpleNamespace(unet=torch.nn.Linear(2, 2)),
              "without prior": SimpleNamespace(unet=torch.nn.Linear(2, 2))}
    with torch.no_grad():
        for sd, shift in zip([base, *models.values()], [0.0, 0.1, 0.5]):
            sd.unet.weight.fill_(shift)
            sd.unet.bias.fill_(shift)

    def mean_change(a, b):
        return (a.weight - b.weight).abs().mean().item()

    answers(ex.changed_most, "without prior", "with prior", capsys, base, models, mean_change)


def test_lesson_5(capsys, tmp_path):
    from safetensors.torch import save_file

    options, _ = memory.plan(8)
    too_big = {**options, "lora": False, "gradient_checkpointing": False, "mixed_precision": "no"}
    answers(ex.fits_in, options, too_big, capsys, 8)
    lora = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({"a": torch.zeros(4, 320), "b": torch.zeros(320, 4)}, lora)
    answers(ex.lora_parameters, 2560, 1280, capsys, lora)
    for step in (50, 100, 150):
        (tmp_path / f"checkpoint-{step:06d}").mkdir()
        (tmp_path / f"checkpoint-{step:06d}" / "state.json").write_text("{}")  # complete
    (tmp_path / "checkpoint-000200.tmp").mkdir()
    answers(ex.latest_checkpoint, "checkpoint-000150", "checkpoint-000200.tmp", capsys, tmp_path)


def test_the_verdicts_speak_portuguese(capsys):
    set_language("pt-BR")
    ex.examples_in_the_dataset(57, 7, 50)
    assert "Ainda não" in capsys.readouterr().out
    ex.examples_in_the_dataset(ANSWER_ME, 7, 50)
    assert "Ainda sem resposta" in capsys.readouterr().out
    ex.examples_in_the_dataset("fifty", 7, 50)  # not a number: a hint, no traceback
    assert capsys.readouterr().out.startswith("❌")
