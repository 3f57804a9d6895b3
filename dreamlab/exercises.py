"""The lessons' exercises check themselves: each function here takes the learner's answer and what
the lesson computed, and prints one line: right (and why), or a hint. Never a traceback.

The answers are worked out from the lesson's own objects (its model, its latents, its run), not
written down, so an exercise stays right on SD 1.5, on the toy model and after a "Try it" change.
An answer left as `...` is "not answered yet". Each returns True when the answer is right.
"""

import math

from .language import say

ANSWER_ME = ...  # what an exercise's answer cell holds until the learner writes one


def verdict(answer, right: bool, hint: str, why: str) -> bool:
    if answer is ANSWER_ME:
        print("✏️ ", say("Not answered yet.", "Ainda sem resposta."), hint)
        return False
    print("✅ " + why if right else "❌ " + say("Not quite. ", "Ainda não. ") + hint)
    return right


def number(answer) -> float | None:
    try:
        return float(answer)
    except (TypeError, ValueError):
        return None


# Lesson 0

def prompt_in_a_new_place(answer, identifier: str, class_noun: str, place: str) -> bool:
    text = answer.lower() if isinstance(answer, str) else ""
    right = f"{identifier} {class_noun}" in text and place in text
    return verdict(answer, right,
                   say(f'The subject is "{identifier} {class_noun}", the identifier before the class noun, and the '
                       f'place comes after it: "a photo of {identifier} {class_noun} {place}".',
                       f'O sujeito é "{identifier} {class_noun}", o identificador antes da classe, e o lugar vem '
                       f'depois (em inglês, que é o que o modelo lê): "a photo of {identifier} {class_noun} {place}".'),
                   say("Identifier + class noun name the subject; the rest of the prompt places it.",
                       "Identificador + classe nomeiam o sujeito; o resto do prompt diz onde ele está."))


def any_member_of_the_class(answer, class_prompt: str, identifier: str) -> bool:
    text = answer.lower() if isinstance(answer, str) else ""
    right = text.strip() == class_prompt.lower() or (class_prompt.split()[-1] in text and identifier not in text)
    return verdict(answer, right,
                   say(f"Leave the identifier out: the class prompt ({class_prompt!r}) asks for any member of "
                       "the class.",
                       f"Deixe o identificador de fora: o prompt da classe ({class_prompt!r}) pede qualquer membro "
                       "da classe."),
                   say("Without the identifier the model draws the class as it knew it: that is what prior "
                       "preservation keeps.",
                       "Sem o identificador o modelo desenha a classe como conhecia: é isso que a preservação da "
                       "classe mantém."))


# Lesson 1

def numbers_in_the_latents(answer, latents) -> bool:
    channels, height, width = latents.shape[-3:]
    return verdict(answer, number(answer) == channels * height * width,
                   say("Multiply the latents' channels by their height and width: `latents.shape` has them.",
                       "Multiplique os canais dos latentes pela altura e pela largura: `latents.shape` os tem."),
                   say(f"{channels} x {height} x {width} = {channels * height * width:,} numbers for one image.",
                       f"{channels} x {height} x {width} = {channels * height * width:,} números por imagem."))


def tokens_in_a_prompt(answer, tokenizer, prompt: str) -> bool:
    count = len(tokenizer(prompt).input_ids)
    return verdict(answer, number(answer) == count,
                   say("Count the start and end tokens too: `len(parts.tokenizer(prompt).input_ids)` tells you.",
                       "Conte também os tokens de início e de fim: `len(parts.tokenizer(prompt).input_ids)` diz."),
                   say(f"{count} tokens, start and end included; the other {77 - count} positions are padding.",
                       f"{count} tokens, início e fim incluídos; as outras {77 - count} posições são preenchimento."))


def signal_equals_noise(answer, alphas_cumprod) -> bool:
    signal, noise = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
    crossing = int((signal - noise).abs().argmin())
    t = number(answer)
    right = t is not None and abs(t - crossing) <= 20
    return verdict(answer, right,
                   say("Find where the two curves of section 5 cross (alphas_cumprod = 0.5).",
                       "Procure onde as duas curvas da seção 5 se cruzam (alphas_cumprod = 0,5)."),
                   say(f"They cross at t = {crossing}: past it, a noisy latent holds more noise than picture.",
                       f"Elas se cruzam em t = {crossing}: depois dele, um latente ruidoso tem mais ruído que imagem."))


# Lesson 2

def examples_in_the_dataset(answer, photos: int, class_images: int) -> bool:
    return verdict(answer, number(answer) == max(photos, class_images),
                   say("One pass pairs every class image with a photo (photos repeat): the larger of the two.",
                       "Uma passada junta cada imagem da classe a uma foto (as fotos se repetem): o maior dos dois."),
                   say(f"max({photos}, {class_images}) = {max(photos, class_images)}: the photos come round again.",
                       f"max({photos}, {class_images}) = {max(photos, class_images)}: as fotos voltam a aparecer."))


def pixels_cut_off(answer, width: int, height: int, size: int) -> bool:
    scale = size / min(width, height)
    cut = max(size, round(max(width, height) * scale)) - size
    return verdict(answer, number(answer) == cut,
                   say(f"The short side becomes {size}; scale the long side by the same factor, then subtract {size}.",
                       f"O lado curto vira {size}; escale o lado longo pelo mesmo fator e subtraia {size}."),
                   say(f"The long side becomes {cut + size} px, and {cut} px of it are cut off.",
                       f"O lado longo vira {cut + size} px, e {cut} px dele são cortados."))


def my_identifier(answer, tokenizer) -> bool:
    from .identifier import check_identifier

    problems = check_identifier(tokenizer, answer) if isinstance(answer, str) else ["not a word"]
    right = not problems and answer.strip().lower() != "sks"
    return verdict(answer, right,
                   say(f"{problems[0] if problems else 'Choose one other than sks'}: pick one from "
                       "rare_identifiers() above.",
                       f"{problems[0] if problems else 'Escolha um que não seja sks'}: escolha um da lista de "
                       "rare_identifiers() acima."),
                   say(f"{answer!r} is one rare token: it means almost nothing yet.",
                       f"{answer!r} é um token raro: ainda quase não significa nada."))


# Lesson 3

def class_rows_loss(answer, guess, target, num_instance: int) -> bool:
    import torch.nn.functional as F

    if len(guess) == num_instance:
        return verdict(answer, False, say("This batch has no class rows: prior preservation is off.",
                                          "Este lote não tem linhas da classe: a preservação da classe está "
                                          "desligada."), "")
    loss = F.mse_loss(guess[num_instance:].float(), target[num_instance:].float()).item()
    value = number(answer)
    return verdict(answer, value is not None and math.isclose(value, loss, rel_tol=1e-3),
                   say("Take the rows from n on (`guess[n:]`, `target[n:]`) and their mean squared error.",
                       "Pegue as linhas a partir de n (`guess[n:]`, `target[n:]`) e o erro quadrático médio delas."),
                   say(f"{loss:.4f}: the prior loss, what keeps the class as the model knew it.",
                       f"{loss:.4f}: a perda da classe, a que mantém a classe como o modelo a conhecia."))


def settings_changed(answer, settings, **wanted) -> bool:
    from .settings import Settings

    right = isinstance(answer, Settings)
    if right:
        got = answer.to_dict()
        expected = {**settings.to_dict(), **wanted}
        right = all(math.isclose(got[k], v) if isinstance(v, float) else got[k] == v for k, v in expected.items())
    changes = ", ".join(f"{k}={v!r}" for k, v in wanted.items())
    return verdict(answer, right,
                   say(f"`dataclasses.replace(settings, {changes})` copies the settings with those changed.",
                       f"`dataclasses.replace(settings, {changes})` copia os ajustes mudando só esses."),
                   say("Everything else kept: the same run, with the changes you asked for.",
                       "Todo o resto igual: o mesmo treino, com as mudanças que você pediu."))


def hardest_timestep(answer, loss_at) -> bool:
    grid = list(range(0, 1000, 50))
    losses = [loss_at(t) for t in grid]
    t = number(answer)
    right = t is not None and 0 <= t <= 999 and loss_at(int(t)) >= 0.8 * max(losses)
    return verdict(answer, right,
                   say("Read the curve above: the loss is highest where the noise is faintest.",
                       "Leia a curva acima: a perda é maior onde o ruído é mais fraco."),
                   say("Small t: a faint film of noise over a detailed picture is the hardest to tell apart.",
                       "t pequeno: uma película fraca de ruído sobre uma figura detalhada é o mais difícil de "
                       "separar."))


# Lesson 4

def drift_prompt(answer, prompts: list[str], identifier: str) -> bool:
    right = isinstance(answer, str) and answer in prompts and identifier not in answer
    return verdict(answer, right,
                   say("Language drift shows where the identifier is absent: the class prompt.",
                       "A deriva da linguagem aparece onde o identificador não está: no prompt da classe."),
                   say("If this prompt draws your subject, the class has drifted toward it.",
                       "Se este prompt desenha o seu sujeito, a classe derivou para ele."))


def changed_most(answer, base, models: dict, mean_change) -> bool:
    changes = {name: mean_change(base.unet, sd.unet) for name, sd in models.items()}
    most = max(changes, key=changes.get)
    return verdict(answer, answer == most,
                   say(f"Compare mean_change(base.unet, model.unet) for each of {list(changes)}.",
                       f"Compare mean_change(base.unet, model.unet) para cada um de {list(changes)}."),
                   say(f"{most}: " + ", ".join(f"{k} {v:.2e}" for k, v in changes.items()),
                       f"{most}: " + ", ".join(f"{k} {v:.2e}" for k, v in changes.items())))


def most_collapsed(answer, numbers: dict) -> bool:
    """`numbers`: lesson 4's paper_numbers, {run: {"PRES": ..., ...}}."""
    pres = {name: row["PRES"] for name, row in numbers.items()}
    most = max(pres, key=pres.get)
    listed = ", ".join(f"{k} {v:.3f}" for k, v in pres.items())
    return verdict(answer, answer == most,
                   say(f"Read the PRES column of the table (or paper_numbers[name]['PRES']) for {list(pres)}.",
                       f"Leia a coluna PRES da tabela (ou paper_numbers[nome]['PRES']) para {list(pres)}."),
                   say(f"{most}: {listed}. Its class-prompt pictures drifted towards your subject.",
                       f"{most}: {listed}. As imagens do prompt da classe derivaram na direção do seu sujeito."))


# Lesson 5

def fits_in(answer, gib: float) -> bool:
    from . import memory

    right = isinstance(answer, dict)
    if right:
        try:
            need = memory.estimate(**{k: v for k, v in answer.items() if k in memory.DEFAULTS})["total"]
        except Exception:  # a dict that is not a set of memory options
            need = math.inf
        right = need <= gib
    return verdict(answer, right,
                   say(f"`options, need = memory.plan({gib:g})`, then answer `options`.",
                       f"`options, need = memory.plan({gib:g})`, e responda `options`."),
                   say(f"These settings need {need:.2f} GiB, under {gib:g}." if right else "",
                       f"Esses ajustes precisam de {need:.2f} GiB, abaixo de {gib:g}." if right else ""))


def lora_parameters(answer, lora_file) -> bool:
    from safetensors import safe_open

    with safe_open(str(lora_file), "pt") as f:
        count = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return verdict(answer, number(answer) == count,
                   say("Open the LoRA file with safetensors.safe_open and add up its tensors' sizes.",
                       "Abra o arquivo da LoRA com safetensors.safe_open e some os tamanhos dos tensores."),
                   say(f"{count:,} numbers: that is all a LoRA run trains and saves.",
                       f"{count:,} números: é tudo o que um treino LoRA treina e salva."))


def latest_checkpoint(answer, checkpoints) -> bool:
    from .checkpoints import find_checkpoint

    latest = find_checkpoint("latest", checkpoints)  # what resume_from="latest" picks
    if latest is None:
        return verdict(answer, False, say("No checkpoint is left: they are deleted once a model is saved whole.",
                                          "Não sobrou checkpoint: eles são apagados quando o modelo é salvo "
                                          "inteiro."), "")
    return verdict(answer, str(answer) == latest.name,
                   say("The latest is the one with the highest step; `.tmp` folders are never used.",
                       "O mais recente é o de maior passo; pastas `.tmp` nunca são usadas."),
                   say(f"{latest.name}: resume_from='latest' goes on from there.",
                       f"{latest.name}: resume_from='latest' continua dali."))

