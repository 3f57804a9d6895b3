"""Write the toy world's DreamBooth subject to dreamlab/assets/instance/striped-ball: five 64 px "photos"
of a red ball with bold white stripes, a thing the toy world never shows (dreamlab/toyworld.py).

    python scripts/make_toy_subject.py            # the shipped set: grass and beach
    python scripts/make_toy_subject.py --contexts grass --out build/one-context

Two contexts, not one: with every photo on grass, "sks ball" also learns "on grass", and the toy
model then struggles to put the ball anywhere else (a prototype drew 6% striped balls for "sks
ball on snow"). Real DreamBooth photos vary their background for the same reason. Snow and the
night sky stay unseen with the subject: they are the lessons' recontextualisation test.
Each photo gets a caption file beside it (00.png -> 00.txt) that names its context, "a photo
of sks ball on grass": the context words then explain the background, and "sks ball" is left
with the object alone (without them "sks ball" also means "on grass or the beach").
--no-captions leaves them out (every photo then has the instance prompt).
The photos are drawn, not taken, so the same arguments always give the same files.
"""

import argparse
from pathlib import Path

from dreamlab import toyworld
from dreamlab.settings import ASSETS

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n", type=int, default=5, help="how many photos (3 to 5 is DreamBooth's usual)")
parser.add_argument("--contexts", nargs="+", default=list(toyworld.SUBJECT_CONTEXTS),
                    choices=list(toyworld.CONTEXTS), help="where the photos are taken, in turn")
parser.add_argument("--captions", action=argparse.BooleanOptionalAction, default=True,
                    help="write each photo's caption, with its context, to a .txt beside it")
parser.add_argument("--out", default=str(ASSETS / "instance" / toyworld.SUBJECT_NAME))
args = parser.parse_args()

out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
for old in [*out.glob("*.png"), *out.glob("*.txt")]:
    old.unlink()
name, cls = toyworld.SUBJECT_NAME, toyworld.SUBJECT_CLASS
for i, photo in enumerate(toyworld.subject_photos(args.n, tuple(args.contexts))):
    photo.save(out / f"{i:02d}.png")
    if args.captions:  # subject_photos takes turns through the contexts
        where = toyworld.CONTEXTS[args.contexts[i % len(args.contexts)]]
        (out / f"{i:02d}.txt").write_text(f"a photo of sks {cls} {where}\n")
contexts = " and ".join(toyworld.CONTEXTS[c] for c in args.contexts)  # "on grass and on the beach"
command = "python scripts/make_toy_subject.py"
if args.contexts != list(toyworld.SUBJECT_CONTEXTS) or args.n != 5:
    command += f" --n {args.n} --contexts " + " ".join(f'"{c}"' for c in args.contexts)
if not args.captions:
    command += " --no-captions"
first = f"a photo of sks {cls} {toyworld.CONTEXTS[args.contexts[0]]}"  # 00.png's caption
captions = (f"""
Each photo's caption is in the .txt beside it (00.png -> 00.txt), "{first}":
it names the background, so that "sks {cls}" learns the ball and not its surroundings.
""" if args.captions else "")
(out / "README.md").write_text(f"""# Toy instance photos: `{name}`

{args.n} pictures, 64 px, of the toy world's DreamBooth subject, a red ball with bold white
stripes, "photographed" {contexts}. The toy world (dreamlab/toyworld.py) draws stripes on
boxes, stars and rings, and red balls, but never a striped ball: the toy Stable Diffusion has
never seen one. Class: `{cls}` (prompts "a photo of sks {cls}" and "a photo of a {cls}").
{captions}Made by `{command}`; drawn by code, no third-party rights.
""")
print(f"wrote {args.n} photos ({contexts}) to {out}")
