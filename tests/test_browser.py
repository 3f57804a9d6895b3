"""Notebooks in a real browser (JupyterLab in Debian's Chromium, tests/browser.py): widgets drawn,
a picture updated in place while its cell runs, errors seen, screenshots taken (build/browser/)."""

import shutil

import nbformat
import pytest
from browser import DONE, ROOT, Lab, Moment, Output, Seen
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from PIL import Image

STDERR = "application/vnd.jupyter.stderr"

PICTURE = """\
import io, time
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, display

def picture(n):
    fig, ax = plt.subplots(figsize=(4, 2.5))
    ax.plot(range(n + 2), [x * x for x in range(n + 2)])
    ax.set_title(f"step {n}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return Image(buffer.getvalue())
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab and one Chromium for the file's notebooks: starting them is most of the time."""
    with Lab(tmp_path_factory.mktemp("notebooks")) as lab:
        yield lab


def write_notebook(lab, name, *cells):
    nb = new_notebook(cells=[new_markdown_cell("# A test notebook"), *map(new_code_cell, cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, lab.folder / name)
    return name


def screenshots(name):
    """build/browser/<name>, emptied: what is there after the test comes from this run."""
    folder = ROOT / "build" / "browser" / name
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def is_screenshot(path, size=(1280, 900)):
    with Image.open(path) as image:
        return image.format == "PNG" and image.size == size


def test_a_form_a_live_picture_and_a_final_one(lab):
    notebook = write_notebook(
        lab, "live.ipynb",
        'import ipywidgets as widgets\nwidgets.IntSlider(value=3, min=1, max=10, description="steps")',
        PICTURE + "\nlive = display(picture(0), display_id=True)  # the dashboard\n"
                  "for n in range(1, 9):\n    time.sleep(0.4)\n    live.update(picture(n))",
        'display(picture(20))\nprint("finished")')
    shots = screenshots("live")
    seen = lab.run(notebook, [
        Moment("form", ".widget-slider"),
        Moment("dashboard", '.jp-CodeCell:has-text("the dashboard") .jp-OutputArea-output img',
               changing=True),
        Moment("end")], out_dir=shots)

    assert seen.errors == []
    assert seen.widgets == 1 and "steps" in seen.outputs[0].text  # a slider, not its text
    assert seen.updated == {"dashboard": True}
    assert seen.images == 2, "the dashboard's picture was added to, not updated in place"
    assert [o.text.strip() for o in seen.outputs if o.cell == 3 and o.text.strip()] == ["finished"]
    names = [p.name for p in seen.screenshots]
    assert names == ["form.png", "dashboard.png", "dashboard-later.png", "end.png"]
    assert all(is_screenshot(p) for p in seen.screenshots)
    dashboard, later = (shots / name for name in names[1:3])
    assert dashboard.read_bytes() != later.read_bytes()
    assert set(seen.seconds) == {"notebook open", "run"}


def test_an_error_stops_the_run_and_is_reported_and_a_still_picture_is_not_live(lab):
    notebook = write_notebook(
        lab, "error.ipynb",
        PICTURE + '\ndisplay(picture(1))  # a still picture',
        'raise ValueError("the photo folder is empty")',
        'print("after the error")')
    seen = lab.run(notebook, [
        Moment("still", '.jp-CodeCell:has-text("a still picture") img', changing=True),
        Moment("stopped", DONE)], out_dir=screenshots("error"), change_within=1.5)

    assert seen.updated == {"still": False}
    assert len(seen.errors) == 1 and seen.errors[0].startswith("cell 2: ")
    assert "ValueError: the photo folder is empty" in seen.errors[0]
    assert not any("after the error" in o.text for o in seen.outputs)  # Run All stopped there
    assert [p.name for p in seen.screenshots] == ["still.png", "still-later.png", "stopped.png"]


def test_a_moment_that_never_comes_fails_when_the_run_ends(lab):
    notebook = write_notebook(lab, "short.ipynb", 'print("hello")')
    shots = screenshots("short")
    with pytest.raises(AssertionError, match="without showing 'text=goodbye'"):
        lab.run(notebook, [Moment("bye", "text=goodbye")], out_dir=shots)
    assert is_screenshot(shots / "bye-missing.png")


def test_what_counts_as_an_error():
    outputs = [Output(1, STDERR, "ZeroDivisionError   Traceback (most recent call last)\n...", 0),
               Output(2, STDERR, "DreamlabError: no photos in /photos: put 3 to 10 there", 0),  # no traceback
               Output(3, STDERR, "UserWarning: the class images are few\n", 0),
               Output(4, STDERR, "steps: 100%|██████████| 40/40 [00:09<00:00]", 0),
               Output(5, "application/vnd.jupyter.stdout", "ValueError: printed, not raised", 0),
               Output(6, "image/png", "", 1)]
    seen = Seen(outputs, widgets=0, updated={}, screenshots=[], seconds={})
    assert [e.split(":")[0] for e in seen.errors] == ["cell 1", "cell 2"]
    assert seen.images == 1


def shortened_lesson_three(folder) -> str:
    """Lesson 3 as it ships, but for its training: 60 steps, samples every 20 (the knobs of its
    parameter cell), so that the browser sees a whole run in a minute or so."""
    nb = nbformat.read(ROOT / "notebooks" / "03_fine_tuning.ipynb", as_version=4)
    cell = nb.cells[2]
    for old, new in [("MAX_TRAIN_STEPS = settings.max_train_steps", "MAX_TRAIN_STEPS = 60"),
                     ("VALIDATION_STEPS, VALIDATION_IMAGES = (100, 2)",
                      "VALIDATION_STEPS, VALIDATION_IMAGES = (20, 2)")]:
        assert old in cell.source, f"lesson 3's parameter cell no longer has {old!r}"
        cell.source = cell.source.replace(old, new)
    nbformat.write(nb, folder / "03_fine_tuning.ipynb")
    return "03_fine_tuning.ipynb"


def test_lesson_three_in_the_browser(lab):
    """The form drawn as widgets, the dashboard redrawn in place while it trains, its last picture
    saying the run is done, and no error, in JupyterLab: what a learner sees."""
    shots = screenshots("03_fine_tuning")
    seen = lab.run(shortened_lesson_three(lab.folder), [
        Moment("form", '.jp-CodeCell:has-text("settings_form") .widget-button'),
        Moment("dashboard", '.jp-CodeCell:has-text("dreamlab.dashboard.Dashboard") .jp-OutputArea-output img',
               changing=True),
        Moment("training", "text=/step [2-5][0-9] of 60 ·/"),  # mid-run: the curve drawn so far
        Moment("trained", "text=/done at step 60 of 60/"),  # its last picture
        Moment("end")], out_dir=shots, timeout=900)

    assert seen.errors == []
    assert seen.widgets > 0
    assert seen.updated == {"dashboard": True}, "the dashboard's picture did not change while it trained"
    texts = [o.text for o in seen.outputs]
    assert any("done at step 60 of 60" in t for t in texts), "the dashboard does not say the run ended"
    assert any("saved the fine-tuned model" in t for t in texts)
    names = [p.name for p in seen.screenshots]
    assert names == ["form.png", "dashboard.png", "dashboard-later.png", "training.png", "trained.png",
                     "end.png"]
    assert (shots / "dashboard.png").read_bytes() != (shots / "dashboard-later.png").read_bytes()
