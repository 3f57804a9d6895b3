"""The live dashboard (issue 15): driven by hand with a fake clock, then around a real toy run in a
notebook kernel, where the stop button is pressed halfway and the run resumed."""

import base64
import io
import textwrap
from types import SimpleNamespace

import pytest
from PIL import Image

import dreamlab.dashboard as dashboard
import dreamlab.show
from dreamlab import DreamlabError, Settings, TrainResult, set_language
from dreamlab.language import language

PROMPTS = ["a photo of sks dog", "a photo of sks dog on the beach"]


class Outputs:
    """Stands in for IPython's display(): what each display handle showed, first to last."""

    def __init__(self):
        self.shown = []  # one list per display(): the object first shown, then each update

    def display(self, obj, display_id=None):
        assert display_id is True  # a handle, to be updated in place
        shown = [obj]
        self.shown.append(shown)
        return SimpleNamespace(update=shown.append)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def outputs(monkeypatch):
    outputs = Outputs()
    monkeypatch.setattr(dreamlab.show, "display", outputs.display)
    monkeypatch.setattr(dashboard, "display", outputs.display)
    return outputs


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(dashboard, "time", clock)
    return clock


def picture(shown) -> Image.Image:
    return Image.open(io.BytesIO(shown.data))


def samples(n=4, size=8):
    return [Image.new("RGB", (size, size), (60 * i, 0, 0)) for i in range(n)]


def test_it_redraws_every_few_seconds_always_on_samples_and_estimates_the_time_left(outputs, clock):
    s = Settings(max_train_steps=100, validation_steps=10, validation_prompts=PROMPTS)
    dash = dashboard.Dashboard(s)
    figure, text = outputs.shown
    assert "step 0 of 100" in text[-1].data and "estimating" in text[-1].data

    dash.on_sample(0, samples())
    shown = len(figure)
    grid = dash.samples_ax.images[0].get_array()
    assert grid.shape == (16, 16, 3)  # two prompts by two seeds, 8 px each
    assert [t.get_text() for t in dash.samples_ax.get_yticklabels()] == ["sks dog", "sks dog on the beach"]

    for step in range(1, 21):  # half a second a step; each set of samples takes 3 s
        clock.now += 0.5
        dash.on_step(step, {"loss": 1 / step, "instance_loss": 1 / step, "step": step})
        if step % 10 == 0:
            clock.now += 3
            dash.on_sample(step, samples())
    # 10 s of steps: a redraw every 2 s, plus one for each set of samples
    assert 4 <= len(figure) - shown <= 8
    assert len(text) == len(figure)  # the text line goes with the picture
    assert list(dash.loss_ax.lines[0].get_xdata()) == list(range(1, 21))
    assert dash.samples_ax.get_title() == "samples at step 20"
    # 80 steps of 0.5 s and 8 more sets of samples of 3 s: 1:04 left; 10 s of steps and 6 s of samples so far
    assert text[-1].data == "step 20 of 100 · 0:16 elapsed · about 1:04 left"
    assert dash.fig.get_suptitle() == text[-1].data
    first, last = picture(figure[0]), picture(figure[-1])
    assert first.format == last.format == "PNG" and first.tobytes() != last.tobytes()


def test_finish_says_whether_the_run_ended_or_was_stopped_in_the_lessons_language(outputs, clock):
    s = Settings(max_train_steps=10)  # no samples: the loss curve alone
    dash = dashboard.Dashboard(s)
    assert dash.samples_ax is None and len(dash.fig.axes) == 1
    history = [{"loss": 0.5, "step": step} for step in (1, 2, 3)]
    for logs in history:
        clock.now += 1
        dash.on_step(logs["step"], logs)
    clock.now += 1
    dash.finish(TrainResult(sd=None, history=history, stopped_early=True, step=3))
    figure, text = outputs.shown
    assert text[-1].data == "stopped at step 3 of 10, after 0:04"
    assert list(dash.loss_ax.lines[0].get_xdata()) == [1, 2, 3]

    before = language()
    try:
        set_language("pt-BR")
        dash = dashboard.Dashboard(s)
        for step in range(1, 11):
            dash.on_step(step, {"loss": 0.5, "step": step})
        dash.finish()  # without the result: the steps it saw
        assert outputs.shown[-1][-1].data == "concluído no passo 10 de 10, após 0:00"
    finally:
        set_language(before)


def test_the_time_format_and_a_wrong_argument():
    assert [dashboard.clock(t) for t in (0, 42, 725, 3723)] == ["0:00", "0:42", "12:05", "1:02:03"]
    with pytest.raises(DreamlabError, match="Dashboard.*Settings.*str 'settings.json'"):
        dashboard.Dashboard("settings.json")


def test_train_live_shows_how_the_run_ended_even_when_it_failed(outputs, clock, monkeypatch):
    def fake_train(s, sd, on_step, on_sample, save):  # two steps, then the end or an error
        for step in (1, 2):
            on_step(step, {"loss": 0.5, "step": step})
        if s.max_train_steps > 2:
            raise DreamlabError("the loss became nan at step 2")
        return TrainResult(sd=sd, history=[{"loss": 0.5, "step": 1}, {"loss": 0.5, "step": 2}], step=2)

    monkeypatch.setattr(dashboard, "train", fake_train)
    assert dashboard.train_live(Settings(max_train_steps=2), sd="model").sd == "model"
    assert outputs.shown[-1][-1].data == "done at step 2 of 2, after 0:00"
    with pytest.raises(DreamlabError, match="nan"):
        dashboard.train_live(Settings(max_train_steps=4))
    assert outputs.shown[-1][-1].data == "stopped at step 2 of 4, after 0:00"


NOTEBOOK = """
import dataclasses, os, signal
import dreamlab, dreamlab.dashboard, dreamlab.show
from dreamlab import toyworld

s = toyworld.dreambooth_settings(model={model!r}, output_dir={out!r}, class_dir={out!r} + "/class",
                                 prior_preservation=False, train_batch_size=1, max_train_steps=6,
                                 validation_steps=3, validation_prompts=["a photo of sks ball"],
                                 num_inference_steps=1)
sd = dreamlab.load_model(s.model)
###
def press_stop(step, logs):  # what the kernel's stop button sends, at step 3
    dash.on_step(step, logs)
    if step == 3:
        os.kill(os.getpid(), signal.SIGINT)

dash = dreamlab.dashboard.Dashboard(s)
result = dreamlab.train(s, sd=sd, on_step=press_stop, on_sample=dash.on_sample, save=False)
dash.finish(result)
###
print(result.stopped_early, result.step)
###
resumed = dataclasses.replace(s, resume_from="latest")
dash = dreamlab.dashboard.Dashboard(resumed)
result = dreamlab.train(resumed, sd=sd, on_step=dash.on_step, on_sample=dash.on_sample, save=False)
dash.finish(result)
###
print([h["step"] for h in result.history], [int(x) for x in dash.loss_ax.lines[0].get_xdata()])
dreamlab.show.png(dash.fig)  # the dashboard's final state, drawn again
"""


def run_notebook(source: str, folder):
    import nbformat
    from nbclient import NotebookClient

    cells = [nbformat.v4.new_code_cell(textwrap.dedent(c).strip()) for c in source.split("###")]
    nb = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    return nb.cells


def outputs_of(cell, kind: str) -> list:
    return [o["data"][kind] for o in cell.outputs if kind in o.get("data", {})]


def status_lines(cell) -> list[str]:  # (not the progress bar's text)
    return [t for t in outputs_of(cell, "text/plain") if " of 6" in t]


def test_a_toy_run_in_a_notebook_is_stopped_resumed_and_leaves_its_last_picture(tmp_path, toy_path,
                                                                                monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own default, as in Jupyter
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a tiny model: threads only wait for each other
    source = NOTEBOOK.format(model=toy_path, out=str(tmp_path / "out"))
    _, stopped, printed, resumed, redrawn = run_notebook(source, tmp_path)

    assert printed.outputs[0]["text"] == "True 3\n"  # the stop button ended the run cleanly
    # each run shows one picture and one text line, updated in place to their final state
    [text] = status_lines(stopped)
    assert text.startswith("stopped at step 3 of 6, after ")
    assert len(outputs_of(stopped, "image/png")) == 1
    [text] = status_lines(resumed)
    assert text.startswith("done at step 6 of 6, after ")
    [image] = outputs_of(resumed, "image/png")
    # the curve has the whole history, the stopped run's steps too, and that is what stayed in the notebook
    assert redrawn.outputs[0]["text"] == "[1, 2, 3, 4, 5, 6] [1, 2, 3, 4, 5, 6]\n"
    [final] = outputs_of(redrawn, "image/png")
    assert image == final
    assert Image.open(io.BytesIO(base64.b64decode(image))).width > 600
