"""A form for the settings a learner tunes, with the memory planner's verdict as they change.

    form = dreamlab.form.settings_form(settings)  # shows the form, starting from `settings`
    settings = form.settings                      # the next cell: the Settings to train with

The form hides nothing: what it gives is `dataclasses.replace(settings, ...)` with the values
changed, validated, and it shows that very line under it, to copy into code. Under the fields it
also says whether a training step fits this GPU (Colab's T4 when there is none), by memory.py's
estimate, and what the planner would turn on when it does not.

Made with ipywidgets, from calls that Colab's ipywidgets 7.7.1 and today's 8 both have.
"""

import dataclasses
import html
import math
from pathlib import Path

import ipywidgets as widgets
from IPython.display import display

from . import memory
from .colab import T4_GIB
from .errors import DreamlabError
from .language import say
from .settings import ATTENTIONS, LR_SCHEDULERS, PRECISIONS, SD15, Settings

# The fields on the form, in groups: (name, what it does in English, in Portuguese).
GROUPS = [
    (("Model", "Modelo"), [
        ("model", "SD 1.5's hub id, or a local folder in diffusers layout (the toy model's offline)",
         "o id do SD 1.5 no Hub, ou uma pasta local no formato do diffusers (a do modelo de brinquedo)"),
        ("resolution", "pixels per side, a multiple of 8: 512 for SD 1.5, 64 for the toy model",
         "pixels por lado, múltiplo de 8: 512 para o SD 1.5, 64 para o modelo de brinquedo"),
    ]),
    (("Training", "Treino"), [
        ("max_train_steps", "how many steps: about 400 for 5 photos; too many and it copies the photos",
         "quantos passos: uns 400 para 5 fotos; passos demais e ele copia as fotos"),
        ("learning_rate", "the size of each step: 5e-6 for a full fine-tune, 1e-4 for LoRA",
         "o tamanho de cada passo: 5e-6 no ajuste fino completo, 1e-4 na LoRA"),
        ("lr_scheduler", "how the rate changes: constant, or down to 0 by the last step (linear, cosine)",
         "como a taxa muda: constante, ou caindo até 0 no último passo (linear, cosine)"),
        ("lr_warmup_steps", "the first steps, in which the rate rises from 0 (not with constant)",
         "os primeiros passos, em que a taxa sobe a partir de 0 (não com constant)"),
        ("train_batch_size", "photos per step (plus as many class images): more needs more memory",
         "fotos por passo (mais outras tantas imagens da classe): mais pede mais memória"),
        ("gradient_accumulation_steps", "batches added up before each update: a larger batch, no more memory",
         "lotes somados antes de cada atualização: um lote maior, sem mais memória"),
        ("train_text_encoder", "train the text encoder too: may learn the subject better, costs memory",
         "treinar também o codificador de texto: pode aprender melhor o sujeito, custa memória"),
        ("train_identifier", 'or train only the identifier\'s word ("sks") in the text encoder',
         'ou treinar só a palavra do identificador ("sks") no codificador de texto'),
        ("identifier_lr", "that word's rate: an embedding needs a far higher one than weights do",
         "a taxa dessa palavra: um embedding precisa de uma bem maior que a dos pesos"),
    ]),
    (("Prior preservation", "Preservação"), [
        ("prior_preservation", 'train on class images too, so that "a dog" stays any dog',
         'treinar também com imagens da classe, para que "a dog" continue sendo um cachorro qualquer'),
        ("prior_loss_weight", "how much the class images' loss counts beside the photos' (1: as much)",
         "quanto a perda das imagens da classe conta ao lado da das fotos (1: o mesmo tanto)"),
        ("num_class_images", "how many class images (drawn by the model first, if missing)",
         "quantas imagens da classe (desenhadas antes pelo próprio modelo, se faltarem)"),
    ]),
    (("Memory", "Memória"), [
        ("mixed_precision", '"fp16" on a T4, "bf16" on newer GPUs: faster, less memory, same result',
         '"fp16" numa T4, "bf16" nas GPUs mais novas: mais rápido, menos memória, mesmo resultado'),
        ("gradient_checkpointing", "recompute activations in the backward pass: less memory, ~25 % slower",
         "recalcular as ativações no backward: menos memória, uns 25 % mais lento"),
        ("step_in_backward", "update the weights during backward, freeing their gradients (no accumulation)",
         "atualizar os pesos durante o backward, liberando os gradientes (sem acumular lotes)"),
        ("use_8bit_adam", "AdamW's state in 8 bits: a quarter of its memory (CUDA and bitsandbytes only)",
         "o estado do AdamW em 8 bits: um quarto da memória (só CUDA, com bitsandbytes)"),
        ("cache_latents", "encode each photo once; the VAE leaves the GPU (one crop per photo)",
         "codificar cada foto uma vez; o VAE sai da GPU (um só recorte por foto)"),
        ("attention", '"sdpa": fused attention, far less memory; "math": the textbook one',
         '"sdpa": atenção fundida, muito menos memória; "math": a dos livros'),
        ("lora", "train small adapters beside the frozen weights: far less memory, learns less",
         "treinar pequenos adaptadores ao lado dos pesos congelados: bem menos memória, aprende menos"),
        ("lora_rank", "the adapters' width: more learns more, and costs more",
         "a largura dos adaptadores (posto): mais aprende mais, e custa mais"),
    ]),
    (("Checkpoints", "Checkpoints"), [
        ("checkpointing_steps", "save the run every N steps, to resume it after a disconnect (0: never)",
         "salvar o treino a cada N passos, para retomá-lo depois de uma desconexão (0: nunca)"),
        ("checkpoints_total_limit", "how many checkpoints are kept: the newest",
         "quantos checkpoints ficam guardados: os mais novos"),
        ("compact_checkpoints", "half-precision weights, no Adam: a sixth of the size, for Drive (not LoRA)",
         "pesos em meia precisão, sem o Adam: um sexto do tamanho, para o Drive (não na LoRA)"),
    ]),
    (("Samples", "Amostras"), [
        ("validation_prompts", "prompts to draw while training, one a line",
         "prompts para desenhar durante o treino, um por linha"),
        ("validation_steps", "draw them every N steps (0: never)",
         "desenhá-los a cada N passos (0: nunca)"),
        ("num_inference_steps", "denoising steps per picture (class images and samples)",
         "passos de remoção de ruído por figura (imagens da classe e amostras)"),
        ("guidance_scale", "how strongly the prompt steers the picture",
         "quanto o prompt manda na figura"),
    ]),
]
FIELDS = [name for _, group in GROUPS for name, _, _ in group]
CHOICES = {"lr_scheduler": LR_SCHEDULERS, "mixed_precision": PRECISIONS, "attention": ATTENTIONS}
# Rates span decades: a slider on a log scale, up to what Settings.validate() allows
RATES = {"learning_rate": (-7, -2), "identifier_lr": (-5, -1)}  # powers of 10
# Keeping the run and watching it (the last two groups) are the learner's: presets leave them
KEPT = [name for _, group in GROUPS[-2:] for name, _, _ in group]
MARGIN = memory.MARGIN  # as plan(): a GPU's last 5 % goes to the CUDA context and fragmentation


# The presets' buttons: what each says, in English and in Portuguese
PRESET_LABELS = {"t4-full": ("T4 full fine-tune", "T4 ajuste fino completo"),
                 "t4-lora": ("T4 LoRA", "T4 LoRA"), "cpu-toy": ("CPU toy", "CPU, brinquedo")}


def presets() -> dict:
    """Starting points, each a Settings whose form fields (but the KEPT ones) a button copies."""
    from .toyworld import dreambooth_settings

    return {
        # Lesson 3 on Colab: Settings()' defaults (SD 1.5 at 512 px, 400 steps at 5e-6) and the
        # savers colab.gpu_settings() gets from memory.plan(colab.COURSE_GIB) on a T4
        "t4-full": Settings(mixed_precision="fp16", gradient_checkpointing=True, step_in_backward=True),
        # Lesson 5 on Colab: colab.gpu_settings(lora=True, lora_rank=8, learning_rate=1e-4), for
        # which the planner needs fp16 only
        "t4-lora": Settings(mixed_precision="fp16", lora=True, lora_rank=8, learning_rate=1e-4),
        # The lessons offline: the toy model learns the striped ball on a CPU
        "cpu-toy": dreambooth_settings(),
    }


def make_widget(name: str, value):
    """The widget for one field, as its type in Settings asks; its description is its name, as in code."""
    kind = Settings.__dataclass_fields__[name].type
    # The names in a 220 px column, the values beside them; a long explanation does not squeeze them
    layout = widgets.Layout(width="440px", flex="0 0 auto")
    common = dict(description=name, style={"description_width": "220px"}, layout=layout)
    if name in CHOICES:
        if value not in CHOICES[name]:
            raise DreamlabError(f"setting {name}={value!r}: choose one of {', '.join(CHOICES[name])}")
        return widgets.Dropdown(options=list(CHOICES[name]), value=value, **common)
    if name in RATES:
        low, high = RATES[name]
        if not 10**low <= value <= 10**high:  # the slider would move it without a word
            raise DreamlabError(f"setting {name}={value!r}: the form takes {10**low:g} to {10**high:g}; "
                                "give a value in that range")
        return widgets.FloatLogSlider(value=value, min=low, max=high, step=0.05, readout_format=".1e",
                                      continuous_update=False, **common)
    if kind is bool:
        return widgets.Checkbox(value=value, **common)  # (indented: the box where the values are)
    if kind is int:
        return widgets.IntText(value=value, **common)
    if kind is float:
        return widgets.FloatText(value=value, **common)
    wide = {**common, "layout": widgets.Layout(width="760px", flex="0 0 auto")}
    if kind is list:  # validation_prompts: one a line
        return widgets.Textarea(value="\n".join(value), continuous_update=False, **wide)
    return widgets.Text(value=value, continuous_update=False, **wide)


def read(widget):
    """A widget's value as the Settings field wants it."""
    if isinstance(widget, widgets.Textarea):
        return [line.strip() for line in widget.value.splitlines() if line.strip()]
    if isinstance(widget, widgets.FloatLogSlider) and is_notch(widget.value):
        # A rate set with the slider is a power of 10^0.05 (1.12 times the one before): given with
        # 2 digits, 2e-06, not 1.9952623149688787e-06. A rate given in code stays as it is.
        return float(f"{widget.value:.2g}")
    return widget.value


def is_notch(value: float) -> bool:
    notches = math.log10(value) / 0.05
    return abs(notches - round(notches)) < 1e-6


def write(widget, value) -> None:
    widget.value = "\n".join(value) if isinstance(widget, widgets.Textarea) else value


def replace_call(changed: dict) -> str:
    """`settings = dataclasses.replace(settings, name=value, ...)`, wrapped at 100 characters."""
    lines, line = [], "settings = dataclasses.replace(settings"
    for name, value in changed.items():
        item = f", {name}={value!r}"
        if len(line) + len(item) > 100:
            lines.append(line + ",")
            line = " " * len("settings = dataclasses.replace(") + item[2:]
        else:
            line += item
    return "\n".join(lines + [line + ")"])


def gpu() -> tuple[float, str]:
    """The GPU memory to plan for, in GiB, and where that number comes from."""
    gib = memory.gpu_memory_gib()
    if gib:
        return gib, say("this GPU", "esta GPU")
    return T4_GIB, say("no GPU here: Colab's T4", "sem GPU aqui: a T4 do Colab")


def memory_verdict(options: dict, gpu_gib: float) -> tuple[bool | None, str]:
    """Whether one training step with `options` (memory.estimate's) fits `gpu_gib`: (True, "fits: 10.7
    of 14.8 GiB"), or (False, "does not fit: ...; try ..." with the planner's way out); None: no estimate."""
    if options["resolution"] % 8 or min(options[k] for k in ("resolution", "train_batch_size",
                                                             "lora_rank")) < 1:
        return None, say("no estimate until the value in red is fixed",
                         "sem estimativa até corrigir o valor em vermelho")
    try:
        need = memory.estimate(**options)["total"]
    except (DreamlabError, OSError) as e:  # a model the planner cannot build without downloading it
        return None, say(f"no estimate: {e}", f"sem estimativa: {e}")
    amount = say(f"{gib(need)} of {gib(gpu_gib)} GiB", f"{gib(need)} de {gib(gpu_gib)} GiB")
    if need <= gpu_gib * (1 - MARGIN):
        return True, say(f"fits: {amount}", f"cabe: {amount}")
    if need <= gpu_gib:  # "14.6 of 14.8" would look like it fits
        amount += say(f" (the last {MARGIN:.0%} is for CUDA)",
                      f" (os últimos {MARGIN:.0%} ficam para o CUDA)")
    return False, say(f"does not fit: {amount}; ", f"não cabe: {amount}; ") + way_out(options, gpu_gib)


def way_out(options: dict, gpu_gib: float) -> str:
    """The planner's first fit that keeps on the savers already on: what to change, as fields."""
    kept = {k: v for k, v in options.items() if k not in memory.SAVINGS or v != memory.SAVINGS[k]}
    try:
        planned, need = memory.plan(gpu_gib, margin=MARGIN, **kept)
    except DreamlabError:
        return say("no saver is enough: lower resolution or train_batch_size",
                   "nenhuma economia basta: diminua resolution ou train_batch_size")
    changes = ", ".join(f"{k}={v!r}" for k, v in planned.items() if k in memory.SAVINGS and v != options[k])
    return say(f"try {changes} ({gib(need['total'])} GiB)", f"tente {changes} ({gib(need['total'])} GiB)")


def gib(x: float) -> str:
    """10.7, and for the toy model 0.11 (not 0.1, nor 0.0 for the tests' tiny one)."""
    return f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def coloured(text: str, colour: str) -> str:
    return f'<span style="color:{colour}">{html.escape(text)}</span>'


class SettingsForm:
    """The widgets of the form; `settings` is what they say, `code` the same in Python."""

    def __init__(self, settings: Settings):
        if not isinstance(settings, Settings):
            raise DreamlabError(f"settings_form({settings!r}): give it a dreamlab.Settings, e.g. the "
                                "lesson's `settings`")
        self.start = settings
        self.fields = {name: make_widget(name, getattr(settings, name)) for name in FIELDS}
        self.presets = presets()
        self.buttons = {key: widgets.Button(description=say(*PRESET_LABELS[key]), layout=widgets.Layout(
            width="auto")) for key in self.presets}
        for key, button in self.buttons.items():
            button.on_click(lambda _, key=key: self.apply_preset(key))
        self.titles = [say(*title) for title, _ in GROUPS]
        self.tabs = widgets.Tab(children=[self.group(fields) for _, fields in GROUPS])
        for i, title in enumerate(self.titles):
            self.tabs.set_title(i, title)  # (ipywidgets 8 also has .titles; 7.7.1 only this)
        self.problem, self.memory, self.code_view = widgets.HTML(), widgets.HTML(), widgets.HTML()
        presets_row = widgets.HBox([widgets.Label(say("Presets:", "Pontos de partida:")),
                                    *self.buttons.values()])
        self.widget = widgets.VBox([presets_row, self.tabs, self.problem, self.memory, self.code_view])
        self.gpu_gib, self.gpu_note = gpu()
        self.estimated = None  # the memory options the verdict shown is for
        self.applying = False  # while a preset sets the fields: one refresh at the end, not one each
        for widget in self.fields.values():
            widget.observe(self.changed, names="value")
        self.refresh()

    def group(self, fields: list):
        """One tab: each field's widget, and beside it what the field does."""
        return widgets.VBox([widgets.HBox([self.fields[name], widgets.HTML(coloured(say(en, pt), "#666"))])
                             for name, en, pt in fields])

    def values(self) -> dict:
        """The form's fields, unchecked."""
        return {name: read(widget) for name, widget in self.fields.items()}

    @property
    def settings(self) -> Settings:
        """The starting settings with the form's values: validated (a DreamlabError says what is wrong)."""
        return dataclasses.replace(self.start, **self.values()).validate()

    @property
    def code(self) -> str:
        """The Python that makes `settings` from the starting settings: the fields changed, only."""
        changed = {k: v for k, v in self.values().items() if v != getattr(self.start, k)}
        return replace_call(changed)

    def apply_preset(self, key: str) -> None:
        """Set the fields (but the KEPT ones) to a preset's: "t4-full", "t4-lora" or "cpu-toy"."""
        if key not in self.presets:
            raise DreamlabError(f"preset {key!r}: choose one of {', '.join(self.presets)}")
        self.applying = True
        try:
            for name, widget in self.fields.items():
                if name not in KEPT:
                    write(widget, getattr(self.presets[key], name))
        finally:
            self.applying = False
        self.refresh()

    def changed(self, _change) -> None:
        if not self.applying:
            self.refresh()

    def refresh(self) -> None:
        """The red line (what is wrong, if anything), the code, and the memory verdict."""
        values = self.values()
        try:
            dataclasses.replace(self.start, **values).validate()
            self.problem.value = ""
        except DreamlabError as e:
            self.problem.value = coloured(str(e), "#c00")
        self.code_view.value = (coloured(say("form.settings is, in code:", "form.settings é, em código:"),
                                         "#666") + f"<pre>{html.escape(self.code)}</pre>")
        # An estimate takes a second or two: made again only when what it depends on changes
        options = {k: values[k] for k in memory.DEFAULTS}
        if options != self.estimated:
            self.estimated = options
            self.show_memory(options)

    def show_memory(self, options: dict) -> None:
        self.memory.value = coloured(say("estimating the GPU memory…", "estimando a memória da GPU…"), "#666")
        fits, text = memory_verdict(options, self.gpu_gib)
        model, folder = options["model"], Path(options["model"]).expanduser()
        model = "SD 1.5" if model == SD15 else folder.name if folder.is_dir() else model
        about = f"({model}, {options['resolution']} px; {self.gpu_note}): "
        verdict = say("GPU memory ", "Memória da GPU ") + about + text
        colour = {True: "#080", False: "#c00", None: "#666"}[fits]
        self.memory.value = f"<b>{coloured(verdict, colour)}</b>"


def settings_form(settings: Settings) -> SettingsForm:
    """Show a form starting from `settings`; its `.settings` is the Settings the form says."""
    form = SettingsForm(settings)
    display(form.widget)
    return form
