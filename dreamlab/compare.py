"""Runs side by side: one table of what differs between runs and what each cost, one grid of the
same prompts and seeds drawn by each run's model, and their loss curves on one plot.

A run is what dreamlab.train saved in its output_dir (runs.py):
    training.json   its settings, loss history, steps, time and peak memory
    metrics.json    numbers measured afterwards: save_metrics(output_dir, {...})
    the model       (a diffusers folder, or LoRA adapters), its samples in <output_dir>-samples/
A run kept in memory only (train(..., save=False)) is its TrainResult, and a model that was not
trained here (the base model) is a loaded StableDiffusion; both stand beside saved runs:

    runs = {"base": dreamlab.load_model(MODEL), "lr 1e-6": "output/lr-1e-6", "lr 5e-6": result}
    compare.table(runs)                    # the settings that differ, metrics, time, memory
    compare.grid(runs, PROMPTS, [0, 1, 2])  # each model draws the same prompts with the same seeds
    compare.loss_curves(runs)
"""

import gc
import html
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from IPython.display import display
from PIL import Image, ImageDraw, ImageFont

from .errors import DreamlabError
from .language import say
from .models import StableDiffusion
from .runs import METRICS, RUN_RECORD, load_trained
from .sample import generate, image_grid
from .settings import Settings
from .train import TrainResult

# Settings that say where files go and how often they are written, not what is trained: they
# differ between almost any two runs, and would only crowd the table.
BOOKKEEPING = ("output_dir", "resume_from", "checkpointing_steps", "checkpoints_total_limit",
               "compact_checkpoints", "validation_prompts", "validation_steps", "num_validation_images")
LAST_STEPS = 10  # the table's loss: the mean of the last steps' (one step's loss is mostly noise)


@dataclass
class Run:
    """One run: read from its folder (load_run), or made from what is in memory (as_run)."""

    name: str
    settings: dict = field(default_factory=dict)  # empty: a model not trained here (the base)
    history: list[dict] = field(default_factory=list)  # one dict of losses per step
    usage: dict = field(default_factory=dict)  # seconds, steps, peak_memory_gib, memory (train.usage)
    metrics: dict = field(default_factory=dict)  # numbers measured afterwards
    folder: Path | None = None  # the saved model; None: kept in memory only
    sd: StableDiffusion | None = None  # the model, when it is in memory
    step: int | None = None  # the steps it trained (fewer than max_train_steps: stopped early)

    @property
    def samples(self) -> list[Path]:
        """The grids of validation prompts drawn while it trained (step-000100.png, ...), oldest first."""
        out = str(self.folder) if self.folder else self.settings.get("output_dir")
        return sorted(Path(out + "-samples").glob("step-*.png")) if out else []


# ----------------------------------------------------------------------------------------
# Reading runs


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DreamlabError(f"cannot read {path} ({type(e).__name__}: {e}): was it written by another "
                            "program, or cut short? Train the run again to write it afresh") from None


def load_run(folder, name: str | None = None, sd: StableDiffusion | None = None) -> Run:
    """The run that dreamlab.train saved in `folder` (its output_dir), named `name` (default: the
    folder's name). `sd`: its model, if already loaded (then a grid does not load it again)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamlabError(f"run folder {folder} does not exist: give the output_dir of a run that "
                            "dreamlab.train saved (save=True, the default)")
    if not (folder / RUN_RECORD).is_file():
        raise DreamlabError(f"{folder} holds no {RUN_RECORD}, so it is not a run saved by dreamlab.train. "
                            "A model trained elsewhere (the base model)? Give it loaded: "
                            "dreamlab.load_model(...)")
    record = read_json(folder / RUN_RECORD)
    metrics = read_json(folder / METRICS) if (folder / METRICS).exists() else {}
    # (a record written before settings were kept in full has only the settings that make the run)
    return Run(name=name or folder.name, settings=record.get("settings") or record.get("run", {}),
               history=record.get("history", []), usage=record.get("usage", {}), metrics=metrics,
               folder=folder, sd=sd, step=record.get("step"))


def as_run(run, name: str | None = None) -> Run:
    """A Run from any of: a Run, a saved run's folder (or its Settings), a TrainResult (saved or
    not), or a loaded StableDiffusion (a model not trained here, such as the base model)."""
    if isinstance(run, Run):
        return replace(run, name=name) if name else run
    if isinstance(run, TrainResult):
        s = run.settings
        if run.output_dir is not None and s is not None:  # saved: its folder has the record and metrics
            return load_run(s.output_dir, name, sd=run.sd)
        out = s.output_dir if s is not None else "unsaved run"
        return Run(name or Path(out).name, s.to_dict() if s is not None else {}, run.history, run.usage,
                   sd=run.sd, step=run.step)
    if isinstance(run, StableDiffusion):
        return Run(name or Path(run.name).name or "model", sd=run)
    if isinstance(run, Settings):
        run = run.output_dir
    if isinstance(run, (str, os.PathLike)):
        return load_run(run, name)
    raise DreamlabError(f"{type(run).__name__} {str(run)[:80]!r} is not a run: give a saved run's folder "
                        "(its output_dir), the TrainResult that dreamlab.train returned, or a loaded model")


def runs_of(runs, names: list[str] | None = None) -> list[Run]:
    """{name: run, ...}, or a list of runs named by `names` (default: their folders' names)."""
    if isinstance(runs, dict):
        names, runs = list(runs), list(runs.values())
    elif not isinstance(runs, (list, tuple)):
        runs = [runs]
    if names is not None and len(names) != len(runs):
        raise DreamlabError(f"{len(runs)} runs but {len(names)} names: give one name per run")
    found = [as_run(run, name) for run, name in zip(runs, names or [None] * len(runs))]
    if not found:
        raise DreamlabError("no runs to compare: give at least one, e.g. {'base': model, 'mine': OUTPUT_DIR}")
    seen = [run.name for run in found]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise DreamlabError(f"more than one run is called {twice[0]!r}: name each one, "
                            "e.g. table({'lr 1e-6': run_a, 'lr 5e-6': run_b})")
    return found


def plain(key: str, value):
    """A metric as JSON can hold it: a text, a bool, or a number (numpy's and 1-element tensors too)."""
    if isinstance(value, (str, bool, int)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise DreamlabError(f"metric {key!r} = {str(value)[:80]!r}: give a number or a text") from None


def save_metrics(folder, metrics: dict) -> Path:
    """Add `metrics` ({"subject fidelity": 0.9, ...}: numbers or text) to the run saved in `folder`
    (its metrics.json; a metric measured again replaces the old value). Written whole: a crash leaves
    the old file. Retraining the run deletes them: they were the old model's."""
    run = as_run(folder)
    if run.folder is None:
        raise DreamlabError(f"run {run.name!r} was not saved (train(..., save=False)), so its metrics have "
                            "no folder to go to: give them to table(runs, metrics={name: {...}}) instead")
    numbers = {key: plain(key, value) for key, value in metrics.items()}
    path, tmp = run.folder / METRICS, run.folder / (METRICS + ".tmp")
    try:
        tmp.write_text(json.dumps({**run.metrics, **numbers}, indent=1))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DreamlabError(f"could not write {path} ({type(e).__name__}: {e}). Is the disk full?") from None
    return path


# ----------------------------------------------------------------------------------------
# The table


@dataclass
class Table:
    """Shown as an HTML table when it is a notebook cell's last value, as aligned text by print()."""

    columns: list[str]
    rows: list[list[str]]
    note: str = ""

    def __str__(self) -> str:
        widths = [max(len(row[i]) for row in [self.columns] + self.rows) for i in range(len(self.columns))]
        lines = ["  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip()
                 for row in [self.columns, ["-" * w for w in widths]] + self.rows]
        return "\n".join(lines + ([self.note] if self.note else []))

    __repr__ = __str__

    def _repr_html_(self) -> str:
        def row(cells, tag):
            return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

        body = "".join(row(r, "td") for r in self.rows)
        note = f"<p><small>{html.escape(self.note)}</small></p>" if self.note else ""
        return f"<table><thead>{row(self.columns, 'th')}</thead><tbody>{body}</tbody></table>{note}"


def cell(value) -> str:
    """A value as a table shows it: 5e-06, True, 0.812, a short text."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (bool, int)) or value is None:
        return str(value)  # as Python writes them: True, None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:39] + "…"


def differing_settings(runs: list[Run]) -> list[str]:
    """The settings that differ between the trained runs, in the order Settings lists them. Only
    those every run recorded: a record older than this module keeps fewer of them."""
    trained = [run.settings for run in runs if run.settings]
    if not trained:
        return []
    names = [k for k in trained[0] if k not in BOOKKEEPING and all(k in s for s in trained)]
    return [k for k in names if len({json.dumps(s[k], sort_keys=True, default=str) for s in trained}) > 1]


def last_loss(history: list[dict]) -> float | None:
    # the instance loss, not the total: with prior preservation the total adds the class images'
    # loss, so it could not be compared with a run without it
    values = [h["instance_loss"] for h in history[-LAST_STEPS:] if "instance_loss" in h]
    return sum(values) / len(values) if values else None


def table(runs, names: list[str] | None = None, metrics: dict | None = None) -> Table:
    """One row per run: the settings that differ between the runs, its steps and last loss, its
    time and peak memory, and its metrics (those saved with it, plus `metrics` = {run name: {...}},
    e.g. the judge's numbers of runs that were not saved)."""
    runs = runs_of(runs, names)
    metrics = {run.name: {**run.metrics, **(metrics or {}).get(run.name, {})} for run in runs}
    changed = differing_settings(runs)
    measured = list(dict.fromkeys(k for m in metrics.values() for k in m))
    columns = ([say("run", "execução")] + changed +
               [say("steps", "passos"),
                say(f"instance loss (last {LAST_STEPS})", f"perda da instância (últimos {LAST_STEPS})"),
                say("time", "tempo"), say("s/step", "s/passo"), say("peak memory", "pico de memória")]
               + measured)
    rows = []
    for run in runs:
        use, loss = run.usage, last_loss(run.history)
        seconds, steps, gib = use.get("seconds"), use.get("steps"), use.get("peak_memory_gib")
        rows.append([run.name] + [cell(run.settings[k]) if k in run.settings else "—" for k in changed] + [
            "—" if run.step is None else str(run.step),
            "—" if loss is None else f"{loss:.4f}",
            "—" if seconds is None else f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min",
            f"{seconds / steps:.2f}" if seconds and steps else "—",
            "—" if gib is None else f"{gib:.2f} GiB ({use.get('memory')})",
        ] + [cell(metrics[run.name][k]) if k in metrics[run.name] else "—" for k in measured])
    note = say("time: the training loop (steps, samples, checkpoints). Peak memory: on a GPU the most its "
               "tensors took (torch.cuda.max_memory_allocated); CPU RSS: the whole process's peak so far, "
               "earlier work in it included. —: not measured, or not a run trained here.",
               "tempo: o laço de treino (passos, amostras, checkpoints). Pico de memória: na GPU, o máximo "
               "ocupado pelos tensores (torch.cuda.max_memory_allocated); CPU RSS: o pico do processo "
               "inteiro até agora, incluindo o que rodou antes nele. —: não medido, ou não treinado aqui.")
    return Table(columns, rows, note)


# ----------------------------------------------------------------------------------------
# The grid


def load_run_model(run: Run, device=None, dtype: torch.dtype | None = None) -> StableDiffusion:
    """A saved run's model: its diffusers folder, or (LoRA) its base model with its adapters and
    its learned word. Default: on the GPU in float16 when there is one, else the CPU in float32."""
    if run.folder is None:
        raise DreamlabError(f"run {run.name!r} has no saved model and none in memory: give its TrainResult "
                            "or its loaded model")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    return load_trained(run.folder, run.settings.get("model"), run.settings.get("revision"), dtype, device)


def first_setting(runs: list[Run], key: str, fallback):
    return next((run.settings[key] for run in runs if key in run.settings), fallback)


def draw(runs, prompts: list[str], seeds: list[int], names: list[str] | None = None,
         resolution: int | None = None, num_inference_steps: int | None = None,
         guidance_scale: float | None = None, batch_size: int = 4, device=None,
         dtype: torch.dtype | None = None) -> dict[str, dict[str, list[Image.Image]]]:
    """Each run's model draws every prompt with every seed: {run name: {prompt: one picture per
    seed}}. The same seed is the same starting noise for every model, so pictures differ only by
    what training did. Resolution, steps and guidance default to the first trained run's settings.
    A model not in memory is loaded (load_run_model), used, and let go: one at a time."""
    runs = runs_of(runs, names)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise DreamlabError(f"prompts={prompts!r}: give a list of prompts, e.g. ['a photo of sks dog']")
    if not isinstance(seeds, (list, tuple, range)) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise DreamlabError(f"seeds={seeds!r}: give a list of whole numbers, e.g. [0, 1, 2]")
    steps = num_inference_steps or first_setting(runs, "num_inference_steps", 25)
    guidance = guidance_scale if guidance_scale is not None else first_setting(runs, "guidance_scale", 7.5)
    pictures = {}
    for run in runs:
        sd = run.sd or load_run_model(run, device, dtype)
        pipe = sd.pipeline()
        default = pipe.unet.config.sample_size * pipe.vae_scale_factor  # what the pipeline would draw
        size = resolution or first_setting(runs, "resolution", default)
        images = generate(pipe, [p for p in prompts for _ in seeds], list(seeds) * len(prompts), size,
                          steps, guidance, batch_size)
        pictures[run.name] = {p: images[i * len(seeds):(i + 1) * len(seeds)] for i, p in enumerate(prompts)}
        del sd, pipe  # a model loaded here goes now, before the next one is loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return pictures


GAP, PAD, LINE, LEFT = 8, 4, 15, 170  # px: between seeds' groups, around text, a text line, prompts' margin


def wrap(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> list[str]:
    """Break `text` into lines at most `width` px wide (a word longer than that is cut)."""
    lines = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            while draw.textlength(word, font=font) > width and len(word) > 1:
                word = word[:-1]
            lines.append(word)
    return lines


def centred(pen: ImageDraw.ImageDraw, x: float, y: float, text: str, font) -> None:
    pen.text((round(x - pen.textlength(text, font=font) / 2), y), text, fill="black", font=font)


def layout(pictures: dict[str, dict[str, list[Image.Image]]], seeds: list[int], size: int) -> Image.Image:
    """One row per prompt; for each seed, a group of columns, one per run. Prompts on the left, seeds
    and run names on top."""
    names = list(pictures)
    prompts = list(pictures[names[0]])
    canvas = ImageDraw.Draw(Image.new("RGB", (1, 1)))  # only to measure text
    font = ImageFont.load_default(size=12)
    name_lines = [wrap(canvas, name, size - 2 * PAD, font)[:3] for name in names]
    top = PAD + LINE + PAD + max(len(lines) for lines in name_lines) * LINE + PAD
    group = len(names) * size
    grid = Image.new("RGB", (LEFT + len(seeds) * (group + GAP) - GAP, top + len(prompts) * size), "white")
    pen = ImageDraw.Draw(grid)
    for k, seed in enumerate(seeds):
        x = LEFT + k * (group + GAP)
        cells = [pictures[name][prompt][k] for prompt in prompts for name in names]
        grid.paste(image_grid(cells, cols=len(names), size=size), (x, top))
        centred(pen, x + group / 2, PAD, f"{say('seed', 'semente')} {seed}", font)
        pen.line((x + PAD, PAD + LINE + 1, x + group - PAD, PAD + LINE + 1), fill="gray")  # over its group
        for m, lines in enumerate(name_lines):  # the names sit right above their pictures
            for j, line in enumerate(lines):
                centred(pen, x + m * size + size / 2, top - PAD - (len(lines) - j) * LINE, line, font)
    for r, prompt in enumerate(prompts):
        lines = wrap(pen, prompt, LEFT - 2 * PAD, font)[:size // LINE]
        y = top + r * size + (size - len(lines) * LINE) / 2
        for j, line in enumerate(lines):
            pen.text((PAD, y + j * LINE), line, fill="black", font=font)
    return grid


def grid(runs, prompts: list[str], seeds: list[int], names: list[str] | None = None,
         shown: int | None = None, pictures: dict | None = None, size: int | None = None,
         **drawing) -> Image.Image:
    """One picture of the runs side by side: a row per prompt and, for each seed, every run's picture
    next to the others'. `shown`: only the first seeds. `pictures`: what draw(runs, prompts, seeds)
    returned, to lay out without drawing again; else they are drawn here (`drawing`: draw's options).
    `size`: each picture's px (default: 128 to 256)."""
    runs = runs_of(runs, names)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = list(seeds)
    if pictures is None:
        seeds = seeds[:shown]
        pictures = draw(runs, prompts, seeds, **drawing)
    missing = [f"{run.name!r}: {prompt!r}" for run in runs for prompt in prompts
               if len(pictures.get(run.name, {}).get(prompt, [])) != len(seeds)]
    if missing:
        raise DreamlabError(f"pictures has no {len(seeds)} pictures (one per seed) for {missing[0]}: give "
                            "what draw() returned for these runs, prompts and seeds")
    seeds = seeds[:shown]
    chosen = {run.name: {p: pictures[run.name][p][:len(seeds)] for p in prompts} for run in runs}
    first = chosen[runs[0].name][prompts[0]][0]
    return layout(chosen, seeds, size or min(max(first.width, 128), 256))


# ----------------------------------------------------------------------------------------
# The loss curves


def loss_figure(runs, names: list[str] | None = None, key: str = "instance_loss"):
    """The runs' losses on one plot (faint: each step's; bold: smoothed). The instance loss by default:
    a run with prior preservation adds the class images' loss to the total."""
    import matplotlib.pyplot as plt

    from .show import smooth

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for run in runs_of(runs, names):
        points = [(h["step"], h[key]) for h in run.history if key in h]
        if points:
            steps, values = zip(*points)
            (faint,) = ax.plot(steps, values, alpha=0.25, lw=1)
            ax.plot(steps, smooth(list(values)), color=faint.get_color(), lw=2, label=run.name)
    ax.set(xlabel=say("step", "passo"), ylabel=key)
    if ax.lines:
        ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    plt.close(fig)  # shown once, by loss_curves
    return fig


def loss_curves(runs, names: list[str] | None = None, key: str = "instance_loss") -> None:
    """Show loss_figure() in the notebook."""
    from .show import png

    display(png(loss_figure(runs, names, key)))
