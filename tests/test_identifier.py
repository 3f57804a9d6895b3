"""Choosing the identifier (identifier.py), on SD v1's real tokenizer."""

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from dreamlab.errors import DreamlabError
from dreamlab.identifier import (
    FIRST_MERGE_ID,
    RARE_BAND,
    STRONG_PRIORS,
    check_identifier,
    identifier_prior,
    is_one_token,
    rare_identifiers,
    reads_like_a_word,
    require_one_token,
)
from dreamlab.offline import TOKENIZER


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(TOKENIZER)


def tokens(tokenizer, word):
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return list(zip(tokenizer.convert_ids_to_tokens(ids), ids))


def test_what_sd_v1s_tokenizer_does_with_the_usual_identifiers(tokenizer):
    assert tokens(tokenizer, "sks") == [("sks</w>", 48136)]
    assert tokens(tokenizer, "ohwx") == [("ohwx</w>", 47993)]
    assert tokens(tokenizer, "zwx") == [("z", 89), ("wx</w>", 3561)]  # two pieces
    assert tokens(tokenizer, "qwrtzp") == [("q", 80), ("wr", 1189), ("tz", 7710), ("p</w>", 335)]
    assert tokens(tokenizer, "dog") == [("dog</w>", 1929)]
    assert is_one_token(tokenizer, "sks") and is_one_token(tokenizer, "OHWX")  # lower-cased
    assert not is_one_token(tokenizer, "zwx")


def test_a_tokens_id_is_its_merges_rank(tokenizer):
    """What the rarity rule rests on: the vocabulary lists the merges in the order learned."""
    merges = (TOKENIZER / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]  # after "#version"
    assert len(merges) == len(tokenizer) - 2 - FIRST_MERGE_ID == 48894
    for token in ["in", "the</w>", "dog</w>", "sks</w>", "ohwx</w>"]:
        rank = tokenizer.convert_tokens_to_ids(token) - FIRST_MERGE_ID
        assert "".join(merges[rank].split()) == token
    assert tokenizer.convert_tokens_to_ids("the</w>") < 1000 < 40000 < 48136 < len(tokenizer)


def test_rare_identifiers_are_short_rare_whole_words(tokenizer):
    words = rare_identifiers(tokenizer, count=30)
    assert len(words) == len(set(words)) == 30
    assert words[:6] == ["hta", "httr", "rcn", "shld", "adl", "omd"]  # rarest first
    assert rare_identifiers(tokenizer, count=30) == words  # the same every time
    assert rare_identifiers(tokenizer, count=10) == words[:10]
    for word in words:
        assert 2 <= len(word) <= 4 and word.isalpha() and word.islower()
        assert is_one_token(tokenizer, word) and check_identifier(tokenizer, word) == []
        assert RARE_BAND[0] <= tokenizer.convert_tokens_to_ids(word + "</w>") < RARE_BAND[1]
        assert word not in STRONG_PRIORS and not reads_like_a_word(word)
    everything = rare_identifiers(tokenizer, count=251)  # all that the defaults allow
    assert "ohwx" in everything and not {"sks", "bnha", "fck", "klan"} & set(everything)
    with pytest.raises(DreamlabError, match="only 251 candidates"):
        rare_identifiers(tokenizer, count=252)
    three = rare_identifiers(tokenizer, count=5, letters=(3, 3))
    assert all(len(w) == 3 for w in three) and three[:3] == ["hta", "rcn", "adl"]


def test_reads_like_a_word():
    for word in ["dog", "rover", "yawn", "snug", "lewd", "ends", "olis", "itch", "kiln"]:
        assert reads_like_a_word(word), word
    for word in ["sks", "ohwx", "zwx", "hta", "qwrtzp", "bnha"]:
        assert not reads_like_a_word(word), word


def test_check_identifier_says_what_is_wrong(tokenizer):
    [problem] = check_identifier(tokenizer, "qwrtzp")
    assert "4 tokens (q, wr, tz, p)" in problem
    [problem] = check_identifier(tokenizer, "zwx")
    assert "2 tokens (z, wx)" in problem
    [problem] = check_identifier(tokenizer, "dog")
    assert "not rare" in problem and "merge 1418 of 48894" in problem
    [problem] = check_identifier(tokenizer, "rover")
    assert "not rare" in problem
    [problem] = check_identifier(tokenizer, "SKS")
    assert "rifle" in problem
    [problem] = check_identifier(tokenizer, "olis")  # rare, one token, but it could be a name
    assert "reads like an English word" in problem
    assert check_identifier(tokenizer, "ohwx") == [] == check_identifier(tokenizer, "hta")
    assert "empty" in check_identifier(tokenizer, " ")[0]


def test_require_one_token(tokenizer):
    require_one_token(tokenizer, "sks")  # one token: a prior is advice, not an error
    with pytest.raises(DreamlabError, match=r"'zwx' is 2 tokens \(z, wx\).*e\.g\. hta, httr, rcn"):
        require_one_token(tokenizer, "zwx")


def test_prior_with_the_toy_text_encoder(tokenizer, toy_path):
    """The toy's text encoder learned the toy world's words only: they move "a photo of a ball",
    the proposed identifiers barely do, and nor do "dog" or "rover", which the toy never read."""
    text_encoder = CLIPTextModel.from_pretrained(toy_path, subfolder="text_encoder", dtype=torch.float32)
    picked = rare_identifiers(tokenizer, count=15)
    known, unread = ["red", "striped", "star", "snow"], ["dog", "rover", "sks"]
    prior = identifier_prior(tokenizer, text_encoder, picked + known + unread, class_noun="ball")
    assert list(prior) == picked + known + unread
    assert all(prior[w] > 0.05 for w in known), prior
    assert all(prior[w] < 0.01 for w in picked + unread), prior
    assert identifier_prior(tokenizer, text_encoder, ["a"], class_noun="ball") == {"a": 0.0}
