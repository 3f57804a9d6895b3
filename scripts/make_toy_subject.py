"""Write the toy world's DreamBooth subject to data/instance/striped-ball: five 64 px "photos"
of a red ball with bold white stripes, a thing the toy world never shows (dreamlab/toyworld.py).

    python scripts/make_toy_subject.py            # the shipped set: grass and beach
    python scripts/make_toy_subject.py --contexts grass --out build/one-context

Two contexts, not one: with every photo on grass, "sks ball" also learns "on grass", and the toy
model then struggles to put the ball anywhere else (a prototype drew 6% striped balls for "sks
ball on snow"). Real DreamBooth photos vary their background for the same reason. Snow and the
night sky stay unseen with the subject: they are the lessons' recontextualisation test.
The photos are drawn, not taken, so the same arguments always give the same files.
"""

import argparse
from pathlib import Path

from dreamlab import toyworld
from dreamlab.settings import DATA

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n", type=int, default=5, help="how many photos (3 to 5 is DreamBooth's usual)")
parser.add_argument("--contexts", nargs="+", default=list(toyworld.SUBJECT_CONTEXTS),
                    choices=list(toyworld.CONTEXTS), help="where the photos are taken, in turn")
parser.add_argument("--out", default=str(DATA / "instance" / toyworld.SUBJECT_NAME))
args = parser.parse_args()

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
for old in out.glob("*.png"):
    old.unlink()
for i, photo in enumerate(toyworld.subject_photos(args.n, tuple(args.contexts))):
    photo.save(out / f"{i:02d}.png")
contexts = " and ".join(toyworld.CONTEXTS[c] for c in args.contexts)  # "on grass and on the beach"
command = "python scripts/make_toy_subject.py"
if args.contexts != list(toyworld.SUBJECT_CONTEXTS) or args.n != 5:
    command += f" --n {args.n} --contexts " + " ".join(f'"{c}"' for c in args.contexts)
name, cls = toyworld.SUBJECT_NAME, toyworld.SUBJECT_CLASS
(out / "README.md").write_text(f"""# Toy instance photos: `{name}`

{args.n} pictures, 64 px, of the toy world's DreamBooth subject, a red ball with bold white
stripes, "photographed" {contexts}. The toy world (dreamlab/toyworld.py) draws stripes on
boxes, stars and rings, and red balls, but never a striped ball: the toy Stable Diffusion has
never seen one. Class: `{cls}` (prompts "a photo of sks {cls}" and "a photo of a {cls}").
Made by `{command}`; drawn by code, no third-party rights.
""")
print(f"wrote {args.n} photos ({contexts}) to {out}")
