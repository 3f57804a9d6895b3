"""Where the course lives on GitHub, and the cells and badges made from it.

The repository is named in one place, pyproject.toml's [project.urls] Repository. Every lesson's
"Open in Colab" badge (the last line of its first cell), its install cell (the second cell) and the
README's badges are made from it by this script:

    python scripts/course_repository.py                      # rewrite them all from pyproject.toml
    python scripts/course_repository.py you/dreamlab         # point the course at your copy
    python scripts/course_repository.py you/dreamlab --ref workshop-2027   # a branch or tag

An instructor who hosts a copy of the course runs the second form once and commits the result.
"""

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
URL_LINE = re.compile(r'^Repository = "https://github\.com/([\w.-]+/[\w.-]+)(?:/tree/([\w./-]+))?"$', re.M)
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w./-]+?/notebooks/")

INSTALL_CELL = '''\
# On Colab: install the course's package (its code, the toy model, the sample photos) into this
# runtime. Colab's own torch, diffusers and transformers are used as they are; nothing is upgraded.
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    %pip install -q "dreamlab @ git+https://github.com/{repository}@{ref}"'''


def repository(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, str]:
    """(owner/name, branch or tag) from pyproject.toml."""
    found = URL_LINE.search(pyproject.read_text())
    if not found:
        raise SystemExit(f"{pyproject}: no line 'Repository = \"https://github.com/OWNER/NAME\"'")
    return found[1], found[2] or "main"


def colab_link(repo: str, ref: str, notebook: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/{ref}/notebooks/{notebook}"


def badge(repo: str, ref: str, notebook: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_link(repo, ref, notebook)})"


def install_cell(repo: str, ref: str) -> str:
    return INSTALL_CELL.format(repository=repo, ref=ref)


def lesson_files() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def update_notebook(path: Path, repo: str, ref: str) -> bool:
    """Put the badge (last line of the first cell) and the install cell (the second) in place;
    True when the file changed."""
    nb = nbformat.read(path, as_version=4)
    intro = nb.cells[0].source.rstrip("\n").split("\n")
    if BADGE_IMAGE in intro[-1]:
        intro = intro[:-1]
    intro = "\n".join(intro).rstrip("\n") + "\n\n" + badge(repo, ref, path.name)
    install = install_cell(repo, ref)
    if nb.cells[0].source == intro and nb.cells[1].source == install:
        return False
    nb.cells[0].source, nb.cells[1].source = intro, install
    nbformat.write(nb, path)
    return True


def update_readme(path: Path, repo: str, ref: str) -> bool:
    text = path.read_text(encoding="utf-8")
    new = COLAB_LINK.sub(colab_link(repo, ref, ""), text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def set_repository(repo: str, ref: str, pyproject: Path = ROOT / "pyproject.toml") -> None:
    text = pyproject.read_text()
    tail = "" if ref == "main" else f"/tree/{ref}"
    pyproject.write_text(URL_LINE.sub(f'Repository = "https://github.com/{repo}{tail}"', text))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", nargs="?", help="OWNER/NAME on GitHub (default: pyproject.toml's)")
    parser.add_argument("--ref", default=None, help="the branch or tag the badges open (default: main)")
    args = parser.parse_args(argv)
    if args.repository:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repository):
            parser.error(f"{args.repository!r}: give OWNER/NAME, e.g. you/dreamlab")
        set_repository(args.repository, args.ref or "main")
    elif args.ref:
        set_repository(repository()[0], args.ref)
    repo, ref = repository()
    changed = [p for p in lesson_files() if update_notebook(p, repo, ref)]
    changed += [p for p in sorted(ROOT.glob("README*.md")) if update_readme(p, repo, ref)]
    print(f"the course points at github.com/{repo} ({ref}); "
          f"{len(changed)} file(s) changed" + "".join(f"\n  {p.relative_to(ROOT)}" for p in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
