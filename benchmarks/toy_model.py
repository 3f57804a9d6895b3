"""How well the toy model draws its own world, as the judge sees it.

    python benchmarks/toy_model.py                       # data/toy-sd
    python benchmarks/toy_model.py --model build/toy-sd --guidance 4

DreamBooth can only put the subject where the model can already draw things: a toy model that
draws "a red dotted ball on snow" right one time in three will not draw "sks ball on snow" much
better. This prints one JSON line: for random full captions of the world ("a photo of a green
striped star on the beach"), the share of pictures the judge finds right on each attribute and on
all four at once; and for captions next to the subject (red, striped or a ball, in the contexts
its photos never showed), the share right on all four.
"""

import argparse
import json

import numpy as np
import torch

import dreamlab
from dreamlab import judge as judging
from dreamlab import toyworld

NEIGHBOURS = ["a photo of a red striped box on snow", "a photo of a red striped star in the night sky",
              "a photo of a red dotted ball on snow", "a photo of a red ball in the night sky"]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default=str(dreamlab.DATA / "toy-sd"))
parser.add_argument("--captions", type=int, default=128, help="random captions, one picture each")
parser.add_argument("--images", type=int, default=32, help="pictures per neighbouring caption")
parser.add_argument("--guidance", type=float, default=7.5)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)

pipe, judge = dreamlab.load_model(args.model).pipeline(), judging.load_judge()
ATTRIBUTES = ("shape", "colour", "pattern", "context")


def asked(caption: str) -> dict:
    """What a full caption asks for: "a photo of a red striped box on snow" -> its four attributes."""
    words = caption.split()
    return {"shape": next(w for w in words if w in toyworld.SHAPES),
            "colour": next(w for w in words if w in toyworld.COLOURS),
            "pattern": next((w for w in words if w in toyworld.PATTERNS), "plain"),
            "context": judging.prompt_context(caption)}


def draw_and_judge(captions: list[str], seeds: list[int]) -> list[dict]:
    images = dreamlab.generate(pipe, captions, seeds, 64, 25, args.guidance, batch_size=32)
    return judge.predict(images)


rng = np.random.default_rng(123)
captions = [toyworld.random_scene(rng).caption() for _ in range(args.captions)]
answers = draw_and_judge(captions, list(range(len(captions))))
wanted = [asked(c) for c in captions]
row = {"model": args.model, "guidance": args.guidance}
for attribute in ATTRIBUTES:
    row[attribute] = np.mean([a[attribute] == w[attribute] for a, w in zip(answers, wanted)])
row["all four"] = np.mean([all(a[k] == w[k] for k in ATTRIBUTES) for a, w in zip(answers, wanted)])
for caption in NEIGHBOURS:
    answers = draw_and_judge([caption] * args.images, list(range(args.images)))
    row[caption] = np.mean([all(a[k] == v for k, v in asked(caption).items()) for a in answers])
print(json.dumps({k: round(float(v), 3) if isinstance(v, (float, np.floating)) else v
                  for k, v in row.items()}))
