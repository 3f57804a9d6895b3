"""A live dashboard for train(): the loss curve, the latest validation samples and the time left.

    dash = Dashboard(settings)
    result = dreamlab.train(settings, sd=sd, on_step=dash.on_step, on_sample=dash.on_sample)
    dash.finish(result)

(or `result = train_live(settings, sd=sd)`, the same three lines). It is a display handle
redrawn in place, not a widget: while a cell runs, the notebook processes no widget events, but
display updates reach JupyterLab and Colab at once, and a notebook run headless keeps the last
picture. Redrawing costs a fraction of a second, so it happens every few seconds at most, plus
on every set of samples and at the end.
"""

import statistics
import time

from IPython.display import Pretty, display

from .errors import DreamlabError
from .language import say
from .sample import image_grid
from .show import LiveFigure, plot_losses
from .train import TrainResult, train


def clock(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Dashboard(LiveFigure):
    """Left: the losses; right (when the settings ask for samples): the latest validation samples,
    one row per validation prompt. Above them, and in a text line below, how far the run is."""

    RECENT = 20  # the step time is the median of the last RECENT steps

    def __init__(self, s, every_seconds: float = 2.0):
        if not hasattr(s, "max_train_steps"):
            raise DreamlabError(f"Dashboard(settings): give it the Settings you pass to train(), "
                                f"not {type(s).__name__} {s!r:.60}")
        self.s, self.every_seconds = s, every_seconds
        self.samples = bool(s.validation_steps)
        layout = {"figsize": (11, 3.8), "width_ratios": [1.2, 1]} if self.samples else {"figsize": (7, 3.5)}
        super().__init__(1, 2 if self.samples else 1, squeeze=False, **layout)
        self.loss_ax = self.axes[0, 0]
        self.samples_ax = self.axes[0, 1] if self.samples else None
        if self.samples:
            self.samples_ax.axis("off")
            self.samples_ax.text(0.5, 0.5, say(en="the validation samples will appear here",
                                               pt="as amostras de validação aparecerão aqui"),
                                 ha="center", va="center", color="0.5", transform=self.samples_ax.transAxes)
        self.history, self.step, self.done = [], 0, None
        self.started = self.drawn_at = time.monotonic()
        self.mark = None  # when the last step (or set of samples) ended
        self.step_seconds = []  # each step's time, sampling left out
        self.sample_seconds = None  # how long the last set of samples took
        self.text = display(Pretty(self.status()), display_id=True)
        self.redraw()

    def on_step(self, step: int, logs: dict) -> None:
        now = time.monotonic()
        if self.mark is not None:  # (the first step also waited for the setup: not a step's time)
            self.step_seconds.append(now - self.mark)
        self.mark, self.step = now, step
        self.history.append(logs)
        if now - self.drawn_at >= self.wait:
            self.redraw()

    def on_sample(self, step: int, images) -> None:
        # train() samples right after on_step(step): the time since then is the sampling's. The
        # samples at step 0 come after loading the model, whose time would count too: not used.
        if self.mark is not None and step == self.step:
            self.sample_seconds = time.monotonic() - self.mark
        self.draw_samples(step, images)
        self.redraw()
        self.mark = time.monotonic()  # (the redraw is not the next step's time either)

    def finish(self, result: TrainResult | None = None) -> None:
        """The final picture, and whether the run ended or was stopped. With train()'s `result`,
        the curve shows its whole history (a resumed run's too)."""
        if result is not None:
            self.history, self.step = result.history, result.step
        stopped = result.stopped_early if result is not None else self.step < self.s.max_train_steps
        self.done = "stopped" if stopped else "done"
        self.redraw()

    def time_left(self) -> float | None:
        if not self.step_seconds:
            return None
        per_step = statistics.median(self.step_seconds[-self.RECENT:])  # a checkpoint's save: no jump
        left = (self.s.max_train_steps - self.step) * per_step
        if self.samples and self.sample_seconds is not None:
            every = self.s.validation_steps
            left += (self.s.max_train_steps // every - self.step // every) * self.sample_seconds
        return left

    def status(self) -> str:
        n, total = self.step, self.s.max_train_steps
        elapsed = clock(time.monotonic() - self.started)
        if self.done == "done":
            return say(en=f"done at step {n} of {total}, after {elapsed}",
                       pt=f"concluído no passo {n} de {total}, após {elapsed}")
        if self.done == "stopped":
            return say(en=f"stopped at step {n} of {total}, after {elapsed}",
                       pt=f"parado no passo {n} de {total}, após {elapsed}")
        left = self.time_left()
        eta = (say(en="estimating the time left...", pt="estimando o tempo restante...") if left is None
               else say(en=f"about {clock(left)} left", pt=f"faltam cerca de {clock(left)}"))
        return say(en=f"step {n} of {total} · {elapsed} elapsed · {eta}",
                   pt=f"passo {n} de {total} · {elapsed} decorridos · {eta}")

    def draw_samples(self, step: int, images) -> None:
        s, ax = self.s, self.samples_ax
        if ax is None:
            return
        n, size = s.num_validation_images, images[0].width
        ax.clear()
        ax.set_axis_on()
        ax.imshow(image_grid(images, cols=n))
        ax.set_xticks([(i + 0.5) * size for i in range(n)], [f"seed {i}" for i in range(n)])
        ax.set_yticks([(i + 0.5) * size for i in range(len(s.validation_prompts))],
                      [p.removeprefix("a photo of ") for p in s.validation_prompts])
        ax.set_title(say(en=f"samples at step {step}", pt=f"amostras no passo {step}"))

    def redraw(self) -> None:
        began = time.monotonic()
        status = self.status()
        plot_losses(self.loss_ax, self.history)
        self.fig.suptitle(status)
        self.update()
        if self.text is not None:  # (None outside IPython)
            self.text.update(Pretty(status))
        self.drawn_at = time.monotonic()
        # a slow machine draws less often: the dashboard takes at most a tenth of the run's time
        self.wait = max(self.every_seconds, 10 * (self.drawn_at - began))


def train_live(s, sd=None, save: bool = True) -> TrainResult:
    """dreamlab.train() with a Dashboard; the dashboard shows how it ended even if it failed."""
    dash, result = Dashboard(s), None
    try:
        result = train(s, sd=sd, on_step=dash.on_step, on_sample=dash.on_sample, save=save)
    finally:
        dash.finish(result)
    return result
