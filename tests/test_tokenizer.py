from transformers import CLIPTokenizer

from dreamlab.data import tokenize
from dreamlab.offline import TOKENIZER


def test_sd_v1_ids_for_a_dreambooth_prompt():
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    assert tokenizer("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]


def test_vocabulary_and_padding_are_sd_v1s():
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    assert len(tokenizer) == 49408
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    ids = tokenize(tokenizer, "A photo of SKS dog").tolist()
    assert len(ids) == 77 == tokenizer.model_max_length
    assert ids[:7] == [49406, 320, 1125, 539, 48136, 1929, 49407]  # lower-cased first
    assert ids[7:] == [49407] * 70  # SD v1 pads with the end token


def test_long_prompts_are_cut_to_77_tokens_ending_with_the_end_token():
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    ids = tokenize(tokenizer, "dog " * 100).tolist()
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407 and ids[1:76] == [1929] * 75
