"""Pictures in notebooks: figures shown once as PNG, one that updates in place, loss curves.

dreamlab never switches matplotlib's backend: the learner's own `plt.plot` stays inline. The
figures dreamlab draws itself are plain `matplotlib.figure.Figure`s (see `subplots`), which
pyplot does not know about, so the inline backend cannot show them a second time at the end of
the cell; `png()` renders them whatever the backend is.

The live figure is a display handle holding a PNG: `display(..., display_id=True)` then
`.update()`. That works in JupyterLab, classic Jupyter and Colab alike, and a notebook run
headless keeps the last picture in its output.
"""

import io

import matplotlib.pyplot as plt
from IPython.display import Image as IPyImage
from IPython.display import display
from matplotlib.figure import Figure

# plt.subplots' layout arguments; all the others (figsize, dpi, ...) are the figure's own
LAYOUT_OPTIONS = ("sharex", "sharey", "squeeze", "width_ratios", "height_ratios", "subplot_kw",
                  "gridspec_kw")


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """Like plt.subplots, but the figure is not pyplot's: it appears only where you show it."""
    layout = {k: kwargs.pop(k) for k in LAYOUT_OPTIONS if k in kwargs}
    fig = Figure(**kwargs)
    return fig, fig.subplots(nrows, ncols, **layout)


def png(fig) -> IPyImage:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return IPyImage(data=buffer.getvalue(), format="png")


def show(fig) -> None:
    """Show a figure in the cell's output, once: `show(fig)` after drawing on `plt.subplots()`.

    A pyplot figure is closed first; otherwise the inline backend would show it a second time
    at the end of the cell (or a loop would pile up open figures)."""
    plt.close(fig)  # (nothing happens for a figure pyplot does not know)
    display(png(fig))


class LiveFigure:
    """A matplotlib figure shown once and redrawn in place: `live.update()` after changing it.

    Takes plt.subplots' arguments: LiveFigure(1, 2, figsize=(10, 4)) has `.fig` and `.axes`."""

    def __init__(self, *args, **kwargs):
        self.fig, self.axes = subplots(*args, **kwargs)
        self.handle = display(png(self.fig), display_id=True)

    def update(self):
        if self.handle is not None:  # (None outside IPython, where there is nothing to update)
            self.handle.update(png(self.fig))


def smooth(values: list[float], window: int = 10) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_losses(ax, history: list[dict]) -> None:
    """Draw the training losses on `ax`: raw (faint) and smoothed, instance and prior parts."""
    ax.clear()
    steps = [h["step"] for h in history]
    for key, colour in (("loss", "C0"), ("instance_loss", "C1"), ("prior_loss", "C2")):
        values = [h[key] for h in history if key in h]
        if values and (key == "loss" or "prior_loss" in history[0]):
            ax.plot(steps, values, colour, alpha=0.25, lw=1)
            ax.plot(steps, smooth(values), colour, lw=2, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    if history:  # (an empty legend only warns)
        ax.legend(loc="upper right")
    ax.grid(alpha=0.3)


def show_images(images, titles=None, cols=None, size=2.5) -> None:
    """Show PIL images (or (H, W) / (H, W, 3) arrays) side by side with titles.

    Returns nothing: a figure returned as a cell's last value would be shown a second time
    (or as "<Figure size ...>" text)."""
    cols = cols or len(images)
    rows = -(-len(images) // cols)
    fig, axes = subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(image, cmap="gray" if getattr(image, "ndim", 3) == 2 else None)
        if titles:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    show(fig)
