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

Which word to use is the paper's section 3.2, "Rare-token identifiers": a common word ("rover")
comes with a meaning the model must unlearn, and a made-up string ("qwrtzp") is cut into common
pieces that each keep theirs. `rare_identifiers` proposes words as the paper does (rare tokens of
the vocabulary, read back as text), `check_identifier` says what is wrong with a word, and
`identifier_prior` measures how much a word already means to a text encoder.
"""

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .data import tokenize
from .errors import DreamlabError
from .files import write_safetensors


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


# Choosing the identifier ------------------------------------------------------------------------
#
# CLIP's tokenizer is a BPE: it starts from single characters and merges the most frequent pair
# of pieces in its training text, then the next most frequent, 48,894 times (merges.txt, in
# order). Its vocabulary lists the 512 characters (each alone, and each ending a word, "a</w>"),
# then one token per merge in that order, then the 2 special tokens. So a token's id is
# 512 + its merge's rank: the later a token was made, the less frequent it was in CLIP's text.
# "the</w>" is id 518 (the 7th merge); "sks</w>" is 48136, among the last.
FIRST_MERGE_ID = 512
# The rare band: the last ~5,400 merges (ids 44000 to 49405, 11% of the vocabulary), the CLIP
# version of the paper's "relatively rare tokens" (for Imagen's T5 it took ranks 5000-10000).
RARE_BAND = (44000, 49406)

# Rare is not enough: every token exists because its letters were frequent somewhere in CLIP's
# text. These rare short tokens name things with a look of their own (or are offensive), so they are never
# proposed. Picked by hand from what rare_identifiers() proposes with the defaults on SD v1's
# vocabulary; it is a short list, not a complete one (see rare_identifiers).
STRONG_PRIORS = {
    "sks": "the SKS, a Soviet rifle (Simonov's self-loading carbine): users report rifles in SD's pictures",
    "bnha": "Boku no Hero Academia, an anime",
    "dbz": "Dragon Ball Z, an anime",
    "ffxv": "Final Fantasy XV, a video game",
    "fgo": "Fate/Grand Order, a video game",
    "rdr": "Red Dead Redemption, a video game",
    "hmv": "a music shop whose logo is a dog listening to a gramophone",
    "hgtv": "a TV channel",
    "cnet": "a technology website",
    "ysl": "Yves Saint Laurent, a fashion brand",
    "msi": "a computer brand",
    "acdc": "AC/DC, a rock band",
    "dmx": "a rapper",
    "lbj": "Lyndon B. Johnson, a US president",
    "dprk": "North Korea",
    "irgc": "Iran's Revolutionary Guards",
    "wwdc": "Apple's developer conference",
    "fck": "a swear word",
    "stfu": "a rude phrase",
    "klan": "the Ku Klux Klan",
    "kkkk": "the Ku Klux Klan",
}

# "Reads like an English word": a rule of thumb for telling words and names from acronyms and
# letter salad without a dictionary. A word of up to 4 letters is one or two syllables: an
# optional onset (one consonant or a pair that starts English words), vowels (a w after them
# counts with them, as in "yawn"), maybe a consonant or two and more vowels, an optional coda
# (one consonant, a double one, or a pair that ends English words), and maybe a plural s.
_ONSETS = "bl br ch cl cr dr fl fr gl gr kn ph pl pr sc sh sk sl sm sn sp st sw th tr tw wh wr"
_CODAS = "ch ck ct ft gh ld lf lk lm ln lp lt mb mn mp nch nd ng nk nt pt rb rc rch rd rf rg rk " \
         "rl rm rn rp rt sh sk sp st tch th"
_C = "[bcdfghjklmnpqrstvwxz]"
_VOWELS = "[aeiouy]+w?"
_WORD_LIKE = re.compile(f"(?:{'|'.join(_ONSETS.split())}|{_C})?{_VOWELS}(?:{_C}{{1,2}}{_VOWELS})?"
                        rf"(?:{'|'.join(_CODAS.split())}|({_C})\1|{_C})?s?")


def reads_like_a_word(word: str) -> bool:
    """Whether `word` could be an English word or name ("dog", "yawn", "olis": True), not an
    acronym or letter salad ("sks", "ohwx", "hta": False)."""
    return _WORD_LIKE.fullmatch(word.lower()) is not None


def _pieces(tokenizer, word: str) -> list[str]:
    """The tokens `word` becomes, written without the end-of-word mark: "zwx" -> ["z", "wx"]."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return [t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(ids)]


def is_one_token(tokenizer, word: str) -> bool:
    """Whether the tokenizer keeps `word` whole: "sks" and "ohwx" yes, "zwx" (z + wx) no."""
    return len(tokenizer(word, add_special_tokens=False).input_ids) == 1


def rare_identifiers(tokenizer, count: int = 20, letters: tuple[int, int] = (2, 4),
                     band: tuple[int, int] = RARE_BAND) -> list[str]:
    """Propose `count` identifiers from the vocabulary, as the DreamBooth paper does, rarest first.

    A candidate is a token that is a whole word (it ends in </w>), of `letters` letters a-z
    (from 2 to 4: short, as the paper's "at most 3 characters"), with an id in `band` (late
    merges: rare in CLIP's text), that does not read like an English word or name
    (`reads_like_a_word`) and is not in STRONG_PRIORS. The same tokenizer always gives the
    same list.

    The rule's limits: the rank is a frequency in CLIP's captions and web text, not in
    pictures, and rare text can still have a strong picture (a brand's logo, a game's style).
    Most candidates are acronyms: the rule keeps them, and STRONG_PRIORS removes only the ones
    noticed by hand. Some real words slip through (abbreviations such as "appt", foreign words),
    and some fine non-words are dropped because they can be said aloud. So treat the list as
    proposals: measure them (`identifier_prior` with SD's own text encoder) or draw
    "a photo of <word>" with the base model, and drop any that already shows something.
    """
    low, high = letters
    shape = re.compile(f"[a-z]{{{low},{high}}}</w>")
    candidates = []
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda item: -item[1]):
        word = token.removesuffix("</w>")
        if (band[0] <= i < band[1] and shape.fullmatch(token) and not reads_like_a_word(word)
                and word not in STRONG_PRIORS):
            candidates.append(word)
            if len(candidates) == count:
                return candidates
    raise DreamlabError(f"rare_identifiers: only {len(candidates)} candidates of {low}-{high} letters "
                        f"have ids in {band}; ask for fewer, or widen letters or band")


def check_identifier(tokenizer, word: str) -> list[str]:
    """What is wrong with `word` as an identifier, one sentence each; [] if nothing is."""
    word = word.strip().lower()  # CLIP's tokenizer lower-cases
    if not word:
        return ["the identifier is empty: choose a rare one-token word, e.g. from rare_identifiers()"]
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) > 1:
        pieces = _pieces(tokenizer, word)
        return [f"{word!r} is {len(ids)} tokens ({', '.join(pieces)}): each piece is shared with "
                "other words and keeps their meaning; choose a word that is one token"]
    # One token: it is a whole word (CLIP's tokenizer ends every word's last token with </w>)
    problems = []
    if word in STRONG_PRIORS:
        problems.append(f"{word!r} already means something to SD: {STRONG_PRIORS[word]}")
    if ids[0] < RARE_BAND[0]:
        rank = ids[0] - FIRST_MERGE_ID + 1
        problems.append(f"{word!r} is not rare: CLIP's tokenizer made it as merge {rank} of "
                        f"{len(tokenizer) - 2 - FIRST_MERGE_ID} (rare ones are the last ~5,400), so it "
                        "was frequent in CLIP's text and has a meaning the model must unlearn")
    elif reads_like_a_word(word):
        problems.append(f"{word!r} reads like an English word or a name: it may have a meaning")
    return problems


def require_one_token(tokenizer, word: str) -> None:
    """A DreamlabError if `word` is several tokens (the settings' check: learning the identifier
    alone moves one row of the word table per token, and the pieces belong to other words)."""
    pieces = _pieces(tokenizer, word)
    if len(pieces) != 1:
        raise DreamlabError(f"identifier {word!r} is {len(pieces)} tokens ({', '.join(pieces)}): "
                            "choose a word that is one token, "
                            f"e.g. {', '.join(rare_identifiers(tokenizer, count=3))} "
                            "(dreamlab.identifier.rare_identifiers)")


def identifier_prior(tokenizer, text_encoder, words, class_noun: str = "dog") -> dict[str, float]:
    """How much each word already means to `text_encoder`: the cosine distance between its
    summaries of "a photo of <word> <class_noun>" and "a photo of a <class_noun>".

    The summary is CLIP's pooled output (the end token's last hidden state, the one CLIP was
    trained to match with pictures). 0 means the word changes nothing; a word with a meaning
    moves the prompt towards it. Only the encoder's training gives the numbers a meaning: with
    SD 1.5's text encoder they are about CLIP's world; the toy's text encoder learned only the
    toy world's words ("red", "striped", "star": far from 0), so every other word, "dog" included,
    is near 0 for it; a random encoder's numbers mean nothing."""
    prompts = [f"a photo of a {class_noun}"] + [f"a photo of {w} {class_noun}" for w in words]
    ids = torch.stack([tokenize(tokenizer, p) for p in prompts]).to(text_encoder.device)
    with torch.no_grad():  # (CLIP has no dropout: train or eval mode gives the same numbers)
        pooled = text_encoder(ids).pooler_output.float()
    distance = 1 - torch.nn.functional.cosine_similarity(pooled[1:], pooled[:1])
    return {w: round(d, 4) for w, d in zip(words, distance.tolist())}
