"""DreamBooth in the toy world, measured by the judge: does it learn the subject, and does
prior preservation stop language drift?

    python benchmarks/toy_dreambooth.py              # the lessons' default fine-tune
    python benchmarks/toy_dreambooth.py --steps 200 --guidance 7.5
    python benchmarks/toy_dreambooth.py --seeds 0 1 2 --no-base   # three training seeds, and their mean
    python benchmarks/toy_dreambooth.py --no-base --prior on --images 16 --class-dir build/cls  # screening

Trains the toy model (dreamlab/assets/toy-sd) on the striped ball's photos twice, with and without prior
preservation, and prints one JSON line per model with the judge's numbers:
  subject_fidelity  "a photo of sks ball {on snow, in the night sky}": contexts never shown
  prompt_fidelity   the same pictures, set in the context the prompt asks for
  trained_context   "a photo of sks ball on grass": a context the photos were taken in
  language_drift    "a photo of a ball" pictures that became our subject
"""

import argparse
import ast
import json
import tempfile
import time
from dataclasses import replace

import torch

import dreamlab
from dreamlab import judge as judging
from dreamlab import toyworld

NEW_CONTEXTS = ["a photo of sks ball on snow", "a photo of sks ball in the night sky"]
SEEN_CONTEXT = "a photo of sks ball on grass"
CLASS_PROMPT = "a photo of a ball"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default=str(dreamlab.ASSETS / "toy-sd"))
parser.add_argument("--steps", type=int, default=None, help="default: the lessons' toy setting")
parser.add_argument("--lr", type=float, default=None)
parser.add_argument("--class-images", type=int, default=None)
parser.add_argument("--text-encoder", choices=("word", "whole", "frozen"), default=None,
                    help='what of it learns: the word "sks" alone (the default), all of it, nothing')
parser.add_argument("--guidance", type=float, default=None)
parser.add_argument("--instance-dir", default=None, help="default: dreamlab/assets/instance/striped-ball")
parser.add_argument("--class-prompt", default=None, help='default: "a photo of a ball"')
parser.add_argument("--class-dir", default=None,
                    help="keep the class images here, to reuse them (default: a temporary folder)")
parser.add_argument("--prior", choices=("both", "on", "off"), default="both",
                    help="train with prior preservation, without, or both (the default)")
parser.add_argument("--base", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the model before fine-tuning (--no-base: skip it)")
parser.add_argument("--images", type=int, default=32, help="pictures per prompt")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="training seeds: one run each, then the mean (pictures use the same seeds)")
parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="any other setting, e.g. --set offset_noise=0.2 min_snr_gamma=5")
args = parser.parse_args()
torch.set_num_threads(args.threads)

overrides = {k: v for k, v in dict(max_train_steps=args.steps, learning_rate=args.lr,
                                   num_class_images=args.class_images,
                                   guidance_scale=args.guidance, instance_dir=args.instance_dir,
                                   class_prompt=args.class_prompt).items() if v is not None}
if args.text_encoder:  # train_identifier and train_text_encoder exclude each other
    overrides.update(train_identifier=args.text_encoder == "word",
                     train_text_encoder=args.text_encoder == "whole")
for item in args.set:  # FIELD=VALUE, the value read as a Python literal where it is one
    field, _, value = item.partition("=")
    try:
        overrides[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        overrides[field] = value
# the lessons' offline fine-tune, with the flags given
base = toyworld.dreambooth_settings(model=args.model, **overrides)
judge = judging.load_judge()
prompts = NEW_CONTEXTS + [SEEN_CONTEXT, CLASS_PROMPT]


def measure(name: str, sd, seconds: float) -> dict:
    _, table = judging.evaluate(sd.pipeline(), judge, prompts, n=args.images, resolution=base.resolution,
                                steps=base.num_inference_steps, guidance=base.guidance_scale, seed=1000)
    row = {
        "model": name,
        "subject_fidelity": sum(table[p]["subject"] for p in NEW_CONTEXTS) / len(NEW_CONTEXTS),
        "prompt_fidelity": sum(table[p]["context"] for p in NEW_CONTEXTS) / len(NEW_CONTEXTS),
        **{"on " + p.split(" ")[-1]: table[p]["subject"] for p in NEW_CONTEXTS},  # each new context
        "trained_context": table[SEEN_CONTEXT]["subject"],
        "language_drift": table[CLASS_PROMPT]["subject"],
        "train_s": round(seconds, 1),
    }
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


with tempfile.TemporaryDirectory() as tmp:
    if args.base:
        measure("base", dreamlab.load_model(args.model), 0.0)
    for prior in {"both": (True, False), "on": (True,), "off": (False,)}[args.prior]:
        rows, which = [], f"prior preservation {'on' if prior else 'off'}"
        for seed in args.seeds:
            s = replace(base, seed=seed, prior_preservation=prior,
                        class_dir=args.class_dir or f"{tmp}/class", output_dir=f"{tmp}/out")
            start = time.perf_counter()
            result = dreamlab.train(s, save=False)
            rows.append(measure(f"dreambooth, {which}, seed {seed}",
                                result.sd, time.perf_counter() - start))
        if len(rows) > 1:  # the mean over training seeds: one seed's figure can mislead
            print(json.dumps({"model": f"mean of {len(rows)} seeds, {which}",
                              **{k: round(sum(r[k] for r in rows) / len(rows), 3)
                                 for k in rows[0] if k != "model"}}), flush=True)
    print(json.dumps({"settings": {**s.to_dict(), "prior_preservation": args.prior, "seeds": args.seeds}}))
