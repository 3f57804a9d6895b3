"""The command line: `dreamlab train`, `sample`, `export`, `push`, `offline-model`.

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

SUBJECT_KEYS = ("instance_dir", "instance_prompt", "class_dir", "class_prompt")  # --more-subject's four


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


def settings_from_flags(args: argparse.Namespace) -> Settings:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    values["more_subjects"] = [dict(zip(SUBJECT_KEYS, subject)) for subject in values["more_subjects"]]
    return Settings(**values)


def command_line(settings: Settings) -> str:
    """The `dreamlab train` command that runs these settings: a flag for each field that differs
    from its default (settings_from_flags reads it back to the same Settings; a test checks)."""
    import shlex

    defaults, words = Settings().to_dict(), ["dreamlab", "train"]
    for name, value in settings.to_dict().items():
        flag = "--" + name.replace("_", "-")
        if value == defaults[name]:
            continue
        if name == "more_subjects":
            for subject in value:
                words += ["--more-subject", *(str(subject[k]) for k in SUBJECT_KEYS)]
        elif isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list | tuple):
            words += [flag, *map(str, value)]
        elif value is not None:
            words += [flag, str(value)]
    return " ".join(shlex.quote(word) for word in words)


def export_model(args) -> None:
    from pathlib import Path

    from . import export
    from .identifier import IDENTIFIER_FILE
    from .runs import load_trained

    if not (args.single_file or args.kohya_lora):
        raise DreamlabError("export: say what to write: --single-file PATH and/or --kohya-lora PATH")
    folder = Path(args.model)
    lora = (folder / export.LORA_FILE).exists()  # a LoRA run: its adapters go on top of the base
    if lora and not args.base:
        raise DreamlabError(f"{folder} holds LoRA adapters: give the model they were trained on "
                            "with --base (e.g. the --model of the train command)")
    if args.kohya_lora and not lora:
        raise DreamlabError(f"{folder} is a full fine-tune, not a LoRA: use --single-file")
    sd = load_trained(folder, args.base)
    if lora and args.kohya_lora and (folder / IDENTIFIER_FILE).exists():  # (the single file has the word)
        print(f"note: {args.kohya_lora} holds the adapters only, not the word learned for the "
              f"identifier ({folder / IDENTIFIER_FILE}); --single-file keeps both")
    if args.single_file:
        print(f"wrote {export.save_single_file(sd, args.single_file)}")
    if args.kohya_lora:
        print(f"wrote {export.save_kohya_lora(sd, args.kohya_lora)}")


def main(argv: list[str] | None = None) -> int:
    return run(make_parser().parse_args(argv))


def make_parser() -> argparse.ArgumentParser:
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
    export_cmd = commands.add_parser("export", help="convert a trained model for other tools")
    export_cmd.add_argument("--model", required=True, help="a trained model folder (full or LoRA)")
    export_cmd.add_argument("--base", default=None, help="for a LoRA folder: the model it was trained on")
    export_cmd.add_argument("--single-file", metavar="PATH.safetensors",
                            help="one file in SD's original layout (AUTOMATIC1111, ComfyUI)")
    export_cmd.add_argument("--kohya-lora", metavar="PATH.safetensors", help="a LoRA in kohya's layout")
    push_cmd = commands.add_parser("push", help="upload a trained model folder to the Hugging Face Hub")
    push_cmd.add_argument("--model", required=True, help="the folder train wrote (it holds README.md)")
    push_cmd.add_argument("--repo-id", required=True, help="your-name/model-name")
    push_cmd.add_argument("--private", action="store_true")
    commands.add_parser("offline-model", help="print the folder of the offline (toy) model")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "train":
            from .train import train

            settings = settings_from_flags(args)
            result = train(settings)
            if result.output_dir and result.stopped_early:
                print(f"stopped at step {result.step} of {settings.max_train_steps}: saved the model trained "
                      f"so far to {result.output_dir} (unfinished; --resume-from latest goes on)")
            elif result.output_dir:
                print(f"saved the fine-tuned model ({result.step} steps) to {result.output_dir}")
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
        elif args.command == "export":
            export_model(args)
        elif args.command == "push":
            from .export import push_to_hub

            print(push_to_hub(args.model, args.repo_id, private=args.private))
        elif args.command == "offline-model":
            from .offline import offline_model

            print(offline_model())
    except DreamlabError as e:
        print(f"dreamlab: error: {e}", file=sys.stderr)
        return 2
    return 0
