"""Runs side by side (issue 15): a run's folder holds what compare.py lays out; one table, one grid."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamlab import DreamlabError, Settings, compare, generate, load_model, set_language, train
from dreamlab.runs import METRICS, RUN_RECORD

PROMPTS = ["a photo of sks dog", "a photo of a dog on the beach"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, offline_path, dreambooth_photos, class_dir):
    """Two 3-step runs of the random model that differ in learning rate and prior preservation:
    the first saved (with validation samples), the second kept in memory only, as lesson 4 does."""
    root = tmp_path_factory.mktemp("runs")
    common = dict(model=offline_path, resolution=64, max_train_steps=3, device="cpu", num_inference_steps=2,
                  center_crop=True, instance_dir=str(dreambooth_photos / "dog"), class_dir=str(class_dir),
                  num_class_images=4)
    saved = Settings(**common, learning_rate=1e-3, prior_preservation=False, output_dir=str(root / "lr-1e-3"),
                     validation_prompts=[PROMPTS[0]], validation_steps=3, num_validation_images=1)
    unsaved = Settings(**common, learning_rate=5e-4, prior_preservation=True, output_dir=str(root / "prior"))
    return {"saved": (saved, train(saved, sd=load_model(offline_path))),
            "unsaved": (unsaved, train(unsaved, sd=load_model(offline_path), save=False))}


def named(runs, offline_path) -> dict:
    return {"base": load_model(offline_path), "lr 1e-3": runs["saved"][0].output_dir,
            "lr 5e-4 + prior": runs["unsaved"][1]}


def test_a_saved_run_folder_reads_back_what_train_wrote(runs):
    s, result = runs["saved"]
    run = compare.load_run(s.output_dir)
    assert run.name == "lr-1e-3" and run.folder == Path(s.output_dir) and run.step == 3
    assert run.settings == s.to_dict()
    assert run.history == result.history and [h["step"] for h in run.history] == [1, 2, 3]
    assert run.usage == result.usage and run.usage["steps"] == 3 and run.usage["seconds"] > 0
    # on a CPU the process's peak resident memory: torch and a model at least
    assert run.usage["memory"] == "CPU RSS" and run.usage["peak_memory_gib"] > 0.1
    assert [p.name for p in run.samples] == ["step-000000.png", "step-000003.png"]
    assert run.metrics == {} and run.sd is None
    # an unsaved run: the same, from its TrainResult
    s2, result2 = runs["unsaved"]
    unsaved = compare.as_run(result2)
    assert unsaved.folder is None and unsaved.sd is result2.sd and unsaved.settings == s2.to_dict()
    assert unsaved.usage["steps"] == 3 and "prior_loss" in unsaved.history[-1]


def test_metrics_are_added_to_the_run_folder_whole(runs, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(Path(runs["saved"][0].output_dir) / RUN_RECORD, folder)
    compare.save_metrics(folder, {"subject fidelity": torch.tensor(0.75), "note": "blurry"})
    compare.save_metrics(folder, {"subject fidelity": np.float32(0.5), "language drift": 0})  # replaces one
    metrics = compare.load_run(folder).metrics
    assert metrics == {"subject fidelity": 0.5, "note": "blurry", "language drift": 0}
    assert sorted(p.name for p in folder.iterdir()) == [METRICS, RUN_RECORD]  # no temporary file left
    with pytest.raises(DreamlabError, match="metric 'curve' = .*give a number or a text"):
        compare.save_metrics(folder, {"curve": [0.1, 0.2]})
    with pytest.raises(DreamlabError, match="'prior' was not saved"):
        compare.save_metrics(runs["unsaved"][1], {"subject fidelity": 0.5})


def test_the_table_lists_exactly_the_settings_that_differ_with_time_and_memory(runs, offline_path):
    judged = {"base": {"subject fidelity": 0.0}, "lr 5e-4 + prior": {"subject fidelity": 0.25}}
    table = compare.table(named(runs, offline_path), metrics=judged)
    # output_dir and the validation samples differ too, but say where files go, not what is trained
    assert table.columns == ["run", "prior_preservation", "learning_rate", "steps", "instance loss (last 10)",
                             "time", "s/step", "peak memory", "subject fidelity"]  # (in Settings' order)
    rows = {row[0]: dict(zip(table.columns, row)) for row in table.rows}
    assert list(rows) == ["base", "lr 1e-3", "lr 5e-4 + prior"]
    saved, prior = rows["lr 1e-3"], rows["lr 5e-4 + prior"]
    assert (saved["learning_rate"], saved["prior_preservation"]) == ("0.001", "False")
    assert (prior["learning_rate"], prior["prior_preservation"]) == ("0.0005", "True")
    history = runs["unsaved"][1].history
    assert prior["instance loss (last 10)"] == f"{np.mean([h['instance_loss'] for h in history]):.4f}"
    for row, result in ((saved, runs["saved"][1]), (prior, runs["unsaved"][1])):
        assert row["steps"] == "3" and row["time"] == f"{result.usage['seconds']:.1f} s"
        assert float(row["s/step"]) == pytest.approx(result.usage["seconds"] / 3, abs=0.01)
        assert row["peak memory"] == f"{result.usage['peak_memory_gib']:.2f} GiB (CPU RSS)"
    # the base model was not trained here: nothing to say but its metrics
    assert [v for k, v in rows["base"].items() if k != "run"] == ["—"] * 7 + ["0"]
    assert (saved["subject fidelity"], prior["subject fidelity"]) == ("—", "0.25")
    text = str(table).splitlines()
    assert text[0].split()[:3] == ["run", "prior_preservation", "learning_rate"]
    assert len(text) == 6 and text[2].startswith("base ") and "CPU RSS" in text[-1]  # the note
    page = table._repr_html_()
    assert page.count("<tr>") == 4 and "<th>prior_preservation</th>" in page and "<td>0.0005</td>" in page


def test_the_table_speaks_the_lessons_language_and_escapes_html(runs):
    set_language("pt-BR")
    try:
        table = compare.table({"<b>run</b>": runs["saved"][0].output_dir})
    finally:
        set_language("en")
    assert table.columns[:3] == ["execução", "passos", "perda da instância (últimos 10)"]
    assert "&lt;b&gt;run&lt;/b&gt;" in table._repr_html_() and "<b>" not in table._repr_html_()


def test_the_grid_shows_each_runs_pictures_of_the_same_prompts_and_seeds(runs, offline_path):
    models = named(runs, offline_path)
    pictures = compare.draw(models, PROMPTS, [0, 1])
    assert list(pictures) == list(models) and all(list(p) == PROMPTS for p in pictures.values())
    # exactly what the saved run's model, loaded from its folder, draws with those seeds (in one batch
    # of 4, as draw() does: the batch's size changes the last bits), at the runs' 2 steps
    saved = load_model(runs["saved"][0].output_dir)
    expected = generate(saved.pipeline(), [p for p in PROMPTS for _ in "ab"], [0, 1, 0, 1], 64, 2)
    drawn = [im.tobytes() for p in PROMPTS for im in pictures["lr 1e-3"][p]]
    assert drawn == [im.tobytes() for im in expected]
    first = pictures["base"][PROMPTS[0]][0].tobytes()
    assert first != pictures["lr 1e-3"][PROMPTS[0]][0].tobytes()  # training changed the picture
    assert first != pictures["lr 5e-4 + prior"][PROMPTS[0]][0].tobytes()
    assert first != pictures["base"][PROMPTS[0]][1].tobytes()  # and seeds differ

    image = compare.grid(models, PROMPTS, [0, 1], pictures=pictures)
    size, group = 128, 3 * 128  # 64 px pictures are shown at 128
    assert image.width == compare.LEFT + 2 * group + compare.GAP
    top = image.height - 2 * size
    assert 2 * compare.LINE <= top < size

    def x(k, m=0):  # where seed k's group, and in it run m's column, begins
        return compare.LEFT + k * (group + compare.GAP) + m * size

    for r, prompt in enumerate(PROMPTS):  # one row per prompt; per seed, the three runs side by side
        for k in range(2):
            for m, name in enumerate(models):
                shown = image.crop((x(k, m), top + r * size, x(k, m) + size, top + (r + 1) * size))
                expected = pictures[name][prompt][k].resize((size, size), Image.NEAREST)
                assert shown.tobytes() == expected.tobytes()

    def pixels(box):
        return np.asarray(image.crop(box).convert("L"))

    # run names right above their pictures: the same in both seeds' groups, different between runs
    names = [pixels((x(k, m), top - compare.PAD - compare.LINE, x(k, m) + size, top))
             for k in range(2) for m in range(3)]
    assert all(n.min() < 100 for n in names)  # something written
    assert all((names[m] == names[3 + m]).all() for m in range(3))
    assert not (names[0] == names[1]).all() and not (names[1] == names[2]).all()
    seeds = [pixels((x(k), 0, x(k) + group, compare.PAD + compare.LINE)) for k in range(2)]
    assert seeds[0].min() < 100 and not (seeds[0] == seeds[1]).all()  # "seed 0", "seed 1"
    prompts = [pixels((0, top + r * size, compare.LEFT, top + (r + 1) * size)) for r in range(2)]
    assert prompts[0].min() < 100 and not (prompts[0] == prompts[1]).all()

    # in one call, drawing only the seeds shown: the same pictures (up to the rounding of other batches)
    two = {name: models[name] for name in ("base", "lr 5e-4 + prior")}
    alone = compare.grid(two, PROMPTS, [0, 1], shown=1)
    again = compare.grid(two, PROMPTS, [0, 1], shown=1, pictures=pictures)
    assert alone.size == again.size == (compare.LEFT + 2 * size, image.height)
    assert np.abs(np.asarray(alone, float) - np.asarray(again, float)).max() <= 3


def test_a_lora_run_is_drawn_by_its_base_model_with_its_adapters_and_word(runs, tmp_path, offline_path):
    s = Settings(**{**runs["saved"][0].to_dict(), "lora": True, "train_identifier": True,
                    "max_train_steps": 2, "validation_steps": 0, "output_dir": str(tmp_path / "lora")})
    result = train(s, sd=load_model(offline_path))
    drawn = compare.draw({"lora": s.output_dir}, PROMPTS[:1], [0, 1])["lora"][PROMPTS[0]]
    expected = generate(result.sd.pipeline(), PROMPTS[:1] * 2, [0, 1], 64, 2)  # the trained model itself
    assert [np.asarray(im).tolist() for im in drawn] == [np.asarray(im).tolist() for im in expected]
    base = generate(load_model(offline_path).pipeline(), PROMPTS[:1] * 2, [0, 1], 64, 2)
    assert drawn[0].tobytes() != base[0].tobytes()  # the adapters and the word were loaded


def test_the_loss_curves_overlay_the_trained_runs(runs, offline_path):
    fig = compare.loss_figure(named(runs, offline_path))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lr 1e-3", "lr 5e-4 + prior"]
    bold = [line for line in ax.lines if line.get_label() == "lr 5e-4 + prior"][0]
    assert list(bold.get_xdata()) == [1, 2, 3]


def test_bad_runs_are_named_with_what_to_do(runs, tmp_path, offline_path):
    with pytest.raises(DreamlabError, match=f"run folder {tmp_path / 'nope'} does not exist"):
        compare.load_run(tmp_path / "nope")
    with pytest.raises(DreamlabError, match=f"{offline_path} holds no training.json.*load_model"):
        compare.table({"base": offline_path})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / RUN_RECORD).write_text('{"step": 3, "hist')
    with pytest.raises(DreamlabError, match=f"cannot read {broken / RUN_RECORD}"):
        compare.load_run(broken)
    (broken / RUN_RECORD).write_text(json.dumps({"step": 3}))
    (broken / METRICS).write_text("not json")
    with pytest.raises(DreamlabError, match=f"cannot read {broken / METRICS}"):
        compare.load_run(broken)
    with pytest.raises(DreamlabError, match="int '42' is not a run"):
        compare.table({"a": 42})
    folder = runs["saved"][0].output_dir
    with pytest.raises(DreamlabError, match="more than one run is called 'lr-1e-3'"):
        compare.table([folder, folder])
    with pytest.raises(DreamlabError, match="2 runs but 1 names"):
        compare.table([folder, folder], names=["a"])
    with pytest.raises(DreamlabError, match="seeds=3: give a list"):
        compare.draw({"a": folder}, PROMPTS, 3)
    with pytest.raises(DreamlabError, match="no 2 pictures .* for 'a': 'a photo of a dog on the beach'"):
        compare.grid({"a": folder}, PROMPTS, [0, 1], pictures={"a": {PROMPTS[0]: [None, None]}})
