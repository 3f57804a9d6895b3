"""How well the toy model draws its own world, as the judge sees it.

    python benchmarks/toy_model.py                       # dreamlab/assets/toy-sd
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

# The subject's neighbours: red, striped or a ball, in the contexts its photos never showed
NEIGHBOURS = [toyworld.Scene("box", "red", "snow", "striped"),
              toyworld.Scene("star", "red", "night sky", "striped"),
              toyworld.Scene("ball", "red", "snow", "dotted"), toyworld.Scene("ball", "red", "night sky")]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default=str(dreamlab.ASSETS / "toy-sd"))
parser.add_argument("--captions", type=int, default=128, help="random captions, one picture each")
parser.add_argument("--images", type=int, default=32, help="pictures per neighbouring caption")
parser.add_argument("--guidance", type=float, default=7.5)
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)

pipe, judge = dreamlab.load_model(args.model).pipeline(), judging.load_judge()
ATTRIBUTES = ("shape", "colour", "pattern", "context")


def draw_and_judge(captions: list[str], seeds: list[int]) -> list[dict]:
    images = dreamlab.generate(pipe, captions, seeds, 64, 25, args.guidance, batch_size=32)
    return judge.predict(images)


def right(answers: list[dict], scenes: list, attributes=ATTRIBUTES) -> float:
    """The share of pictures whose `attributes` the judge finds as each scene asked."""
    return np.mean([all(a[k] == getattr(scene, k) for k in attributes) for a, scene in zip(answers, scenes)])


rng = np.random.default_rng(123)
scenes = [toyworld.random_scene(rng) for _ in range(args.captions)]
answers = draw_and_judge([scene.caption() for scene in scenes], list(range(len(scenes))))
row = {"model": args.model, "guidance": args.guidance}
for attribute in ATTRIBUTES:
    row[attribute] = right(answers, scenes, (attribute,))
row["all four"] = right(answers, scenes)
for scene in NEIGHBOURS:
    answers = draw_and_judge([scene.caption()] * args.images, list(range(args.images)))
    row[scene.caption()] = right(answers, [scene] * args.images)
print(json.dumps({k: round(float(v), 3) if isinstance(v, (float, np.floating)) else v
                  for k, v in row.items()}))
