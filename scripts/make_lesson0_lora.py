"""Train the LoRA that lesson 0 shows: the toy model taught the striped ball, as lesson 5 teaches it.

    python scripts/make_lesson0_lora.py       # -> dreamlab/assets/striped-ball-lora/ (~2 CPU minutes)

Lesson 0 runs in seconds, so it cannot train; it loads these adapters (and the learned word
"sks") onto the toy model, and draws the subject before and after. The recipe is lesson 5's
offline LoRA (rank 4, learning rate 1e-4, constant, 400 steps, prior preservation, the word
"sks" learned too), so what lesson 0 promises is what lesson 5 makes. The same seed gives the
same files.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import dreamlab
from dreamlab import toyworld
from dreamlab.identifier import IDENTIFIER_FILE
from dreamlab.settings import ASSETS

LORA_FILE = "pytorch_lora_weights.safetensors"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", type=Path, default=ASSETS / "striped-ball-lora")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

with tempfile.TemporaryDirectory() as work:
    settings = toyworld.dreambooth_settings(lora=True, lora_rank=4, learning_rate=1e-4,
                                            lr_scheduler="constant", seed=args.seed,
                                            output_dir=str(Path(work) / "lora"),
                                            class_dir=str(Path(work) / "class-images"))
    result = dreamlab.train(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in (LORA_FILE, IDENTIFIER_FILE):
        shutil.copy(Path(settings.output_dir) / name, args.out / name)
print(f"trained {result.step} steps; wrote {LORA_FILE} and {IDENTIFIER_FILE} to {args.out}")
