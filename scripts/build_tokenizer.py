"""Rebuild Stable Diffusion v1's tokenizer (OpenAI CLIP's BPE) without the model hub.

SD v1 uses the CLIP ViT-L/14 tokenizer. Its vocabulary is not on PyPI as a tokenizer
folder, but CLIP's BPE merge list is: `open-clip-torch` ships `bpe_simple_vocab_16e6.txt.gz`.
This script turns that merge list into the same four files that the hub's
`stable-diffusion-v1-5/tokenizer` folder holds, and writes them to data/sd-v1-tokenizer.

    pip download --no-deps open-clip-torch -d build/oc
    python scripts/build_tokenizer.py build/oc/open_clip_torch-*.whl

open_clip is only read as a zip file here; it is never imported (it needs torchvision).
"""

import argparse
import gzip
import json
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "sd-v1-tokenizer"
N_MERGES = 49152 - 256 - 2  # CLIP keeps merge lines 1..48894 (line 0 is a header)


def bytes_to_unicode():
    """GPT-2/CLIP's map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def read_merges(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("bpe_simple_vocab_16e6.txt.gz"))
        text = gzip.decompress(z.read(name)).decode("utf-8")
    return text.split("\n")[1 : N_MERGES + 1]


def build(wheel: Path, out: Path = OUT) -> None:
    merges = read_merges(wheel)
    byte_chars = bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408, len(vocab)

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",  # SD v1 pads with the end token
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {out} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="an open-clip-torch wheel (pip download)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    build(args.wheel, args.out)
