"""The command line: `dreamlab train ...`, `dreamlab sample ...`, `dreamlab offline-model`.

Every field of Settings becomes a flag of `train` (--instance-dir, --max-train-steps, ...),
with the same default, so the notebooks and the command line cannot drift apart.
Works under `accelerate launch -m dreamlab train ...` for several GPUs.
"""

import argparse
import dataclasses
import sys
import types
import typing

from .errors import DreamlabError
from .settings import Settings


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # "str | None" -> str
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        if f.name == "more_subjects":  # --more-subject DIR PROMPT CLASS_DIR CLASS_PROMPT, repeatable
            parser.add_argument("--more-subject", dest=f.name, nargs=4, action="append", default=[],
                                metavar=("INSTANCE_DIR", "INSTANCE_PROMPT", "CLASS_DIR", "CLASS_PROMPT"),
                                help="another subject to learn in the same run (repeatable)")
        elif kind is list:  # --validation-prompts "a photo of sks dog" "sks dog on the beach"
            parser.add_argument(flag, nargs="+", default=[], metavar=f.name.upper())
        elif kind is bool:  # --prior-preservation / --no-prior-preservation
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=kind, default=f.default, metavar=f.name.upper(),
                                help=f"default: {f.default}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreamlab", description="DreamBooth for Stable Diffusion")
    commands = parser.add_subparsers(dest="command", required=True)
    train_cmd = commands.add_parser("train", help="fine-tune a model on photos of a subject")
    add_settings_flags(train_cmd)
    sample_cmd = commands.add_parser("sample", help="generate images with a (fine-tuned) model")
    sample_cmd.add_argument("--model", required=True, help="a model folder or hub id")
    sample_cmd.add_argument("--prompt", action="append", required=True, help="repeatable")
    sample_cmd.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    sample_cmd.add_argument("--resolution", type=int, default=512)
    sample_cmd.add_argument("--steps", type=int, default=25)
    sample_cmd.add_argument("--guidance-scale", type=float, default=7.5)
    sample_cmd.add_argument("--device", default=None)
    sample_cmd.add_argument("--out", default="samples.png", help="the grid image to write")
    commands.add_parser("offline-model", help="print the folder of the offline (toy) model")
    args = parser.parse_args(argv)

    try:
        if args.command == "train":
            from .train import train

            values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
            keys = ("instance_dir", "instance_prompt", "class_dir", "class_prompt")
            values["more_subjects"] = [dict(zip(keys, subject)) for subject in values["more_subjects"]]
            result = train(Settings(**values))
            if result.output_dir:
                print(f"saved the fine-tuned model to {result.output_dir}")
        elif args.command == "sample":
            import torch

            from .models import load_model
            from .sample import generate, image_grid

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            pipe = load_model(args.model, device=device).pipeline()
            prompts = [p for p in args.prompt for _ in args.seeds]
            images = generate(pipe, prompts, args.seeds * len(args.prompt), args.resolution,
                              args.steps, args.guidance_scale)
            image_grid(images, cols=len(args.seeds)).save(args.out)
            print(f"wrote {args.out}")
        elif args.command == "offline-model":
            from .offline import offline_model

            print(offline_model())
    except DreamlabError as e:
        print(f"dreamlab: error: {e}", file=sys.stderr)
        return 2
    return 0
