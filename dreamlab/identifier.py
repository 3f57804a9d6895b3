"""Learn the identifier's word: textual inversion inside DreamBooth.

In "a photo of sks dog", "sks" is a word the model barely knows. Training the whole text encoder
lets the subject be carried by the text, but it also changes how every other word is read, and
the words that came with the photos ("on grass") get tied to the subject. Here only one row of
the text encoder's word table moves: the identifier's embedding. The rest of the text encoder
is the pretrained one, so "sks dog on snow" is composed the way the model composes any
"<word> dog on snow". diffusers' advanced DreamBooth script calls this pivotal tuning.

The identifier is what the instance prompt says and the class prompt does not:
"a photo of sks dog" against "a photo of a dog" gives "sks". So keep the instance prompt to the
class prompt plus the identifier: "a photo of sks dog on a sofa" would train "on" and "sofa" too
(say where a photo was taken in its caption file instead, lesson 2).
"""

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import DreamlabError


def identifier_words(instance_prompt: str, class_prompt: str | None) -> list[str]:
    """The words of `instance_prompt` that `class_prompt` lacks: the identifier(s)."""
    if not class_prompt:
        raise DreamlabError(f"train_identifier: instance prompt {instance_prompt!r} needs a class prompt "
                            "(e.g. \"a photo of a dog\") to tell the identifier from the class")
    known = set(re.findall(r"\w+", class_prompt.lower()))  # words; "dog." is "dog"
    words = [w for w in re.findall(r"\w+", instance_prompt.lower()) if w not in known]
    if not words:
        raise DreamlabError(f"train_identifier: instance prompt {instance_prompt!r} has no word that "
                            f"class prompt {class_prompt!r} lacks; put the identifier in it, "
                            "e.g. \"a photo of sks dog\"")
    return words


def identifier_token_ids(tokenizer, subjects) -> list[int]:
    """The token ids of every subject's identifier. "sks" is one token; a word the tokenizer
    splits ("zwx" -> "z", "wx") trains its pieces, which other words share: prefer one token."""
    words = [w for s in subjects for w in identifier_words(s.instance_prompt, s.class_prompt)]
    ids = tokenizer(words, add_special_tokens=False).input_ids
    return sorted({i for word in ids for i in word})


def train_identifier_embedding(text_encoder, token_ids: list[int]) -> torch.nn.Parameter:
    """Make the text encoder's word table trainable, with a gradient for `token_ids`' rows only.

    The table is one weight, so it is trained whole; a hook zeroes the other rows' gradients, and
    Adam then leaves them exactly as they were (weight decay must be 0 for it: see train.py)."""
    table = text_encoder.get_input_embeddings().weight
    table.requires_grad_(True)
    keep = torch.zeros(table.shape[0], 1, dtype=table.dtype, device=table.device)
    keep[token_ids] = 1
    table.register_hook(lambda grad: grad * keep.to(grad.device, grad.dtype))
    return table


# With LoRA the text encoder itself is not saved, only the adapters: the learned word goes
# beside them, as {token: vector} ("sks</w>": its 768 numbers for SD 1.5).
IDENTIFIER_FILE = "identifier_embeddings.safetensors"


def save_identifier(sd, subjects, folder) -> Path:
    """Write the identifier's learned vectors to `folder`/identifier_embeddings.safetensors."""
    from .export import write_safetensors  # (here: export imports settings, which imports us)

    table = sd.text_encoder.get_input_embeddings().weight
    vectors = {sd.tokenizer.convert_ids_to_tokens(i): table[i].float()
               for i in identifier_token_ids(sd.tokenizer, subjects)}
    return write_safetensors(vectors, Path(folder) / IDENTIFIER_FILE)


def load_identifier(model, folder) -> list[str]:
    """Put the learned vectors saved in `folder` (if any) into `model`'s text encoder (a
    pipeline or dreamlab's StableDiffusion); returns the tokens set. LoRA runs need it beside
    `load_lora_weights`: the adapters alone do not carry the word."""
    path = Path(folder) / IDENTIFIER_FILE
    if not path.exists():
        return []
    table = model.text_encoder.get_input_embeddings().weight
    vectors = load_file(path)
    with torch.no_grad():
        for token, vector in vectors.items():
            table[model.tokenizer.convert_tokens_to_ids(token)] = vector.to(table.dtype)
    return list(vectors)
