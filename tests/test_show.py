"""dreamlab.show leaves matplotlib's backend alone (issue 15): in a real notebook kernel the
learner's own plots stay inline, and dreamlab's pictures appear exactly once."""

import base64
import io
import textwrap

import numpy as np
from PIL import Image

import dreamlab.show

CELLS = [
    """
    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np
    import dreamlab.show
    print(matplotlib.get_backend())
    """,
    "plt.plot([1, 2]);",  # the learner's own plot, shown by the inline backend at the end of the cell
    """
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([3, 1])
    dreamlab.show.show(fig)
    """,
    'dreamlab.show.show_images([np.zeros((8, 8)), np.ones((8, 8, 3))], titles=["a", "b"])',
    """
    live = dreamlab.show.LiveFigure(1, 2, figsize=(4, 2), width_ratios=[2, 1])
    live.axes[0].plot([1, 2, 3])
    live.update()
    """,
    "dreamlab.show.png(live.fig)",  # the figure as it is now, to compare with the live one
    "print(plt.get_fignums())",  # dreamlab left no pyplot figure open
]


def images(cell) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"])))
            for o in cell.outputs if "image/png" in o.get("data", {})]


def test_plots_stay_inline_and_dreamlabs_pictures_appear_once(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own default, as in Jupyter
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c).strip())
                                         for c in CELLS])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    imported, plotted, shown, side_by_side, live, now, left_open = nb.cells

    assert "inline" in imported.outputs[0]["text"]
    assert len(images(plotted)) == 1
    [picture] = images(shown)
    assert picture.size[0] < 400  # the 3-inch figure at 90 dpi
    [picture] = images(side_by_side)
    assert picture.size[0] > 1.8 * picture.size[1]  # two pictures side by side
    [picture] = images(live)  # the first picture, replaced by the update: the figure as it is now
    assert picture.tobytes() == images(now)[0].tobytes()
    assert picture.size[0] > 1.6 * picture.size[1]
    assert left_open.outputs[0]["text"] == "[]\n"


def test_subplots_makes_a_figure_pyplot_does_not_know():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig, (left, right) = dreamlab.show.subplots(1, 2, figsize=(4, 2), width_ratios=[3, 1], dpi=50)
    assert plt.get_fignums() == before
    assert tuple(fig.get_size_inches()) == (4, 2) and fig.dpi == 50
    assert left.get_position().width > 2.5 * right.get_position().width
    left.imshow(np.zeros((4, 4)))
    assert Image.open(io.BytesIO(dreamlab.show.png(fig).data)).format == "PNG"
