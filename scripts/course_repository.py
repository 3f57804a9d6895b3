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
# Links to the course's pages (the glossary, the workshop kit): absolute, since Colab opens a
# lesson alone, without the repository around it
DOCS_LINK = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+/blob/[\w./-]+?/docs/")

INSTALL_CELL = '''\
# {comment}
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    %pip install -q "dreamlab @ git+https://github.com/{repository}@{ref}"'''
INSTALL_COMMENT = {
    "en": ("On Colab: install the course's package (its code, the toy model, the sample photos) into this\n"
           "# runtime. Colab's own torch, diffusers and transformers are used as they are; nothing is "
           "upgraded."),
    "pt-BR": ("No Colab: instala o pacote do curso (o código, o modelo de brinquedo, as fotos de exemplo)\n"
              "# neste ambiente. O torch, o diffusers e o transformers do Colab ficam como estão: nada é "
              "atualizado."),
}


def repository(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, str]:
    """(owner/name, branch or tag) from pyproject.toml."""
    found = URL_LINE.search(pyproject.read_text())
    if not found:
        raise SystemExit(f"{pyproject}: no line 'Repository = \"https://github.com/OWNER/NAME\"'")
    return found[1], found[2] or "main"


def colab_link(repo: str, ref: str, notebook: str) -> str:
    """`notebook`: its path under notebooks/ ("01_....ipynb", "pt-BR/01_....ipynb")."""
    return f"https://colab.research.google.com/github/{repo}/blob/{ref}/notebooks/{notebook}"


def badge(repo: str, ref: str, notebook: str) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_link(repo, ref, notebook)})"


def install_cell(repo: str, ref: str, language: str = "en") -> str:
    return INSTALL_CELL.format(repository=repo, ref=ref, comment=INSTALL_COMMENT[language])


def lesson_files() -> list[Path]:
    notebooks = ROOT / "notebooks"
    return sorted(notebooks.glob("*.ipynb")) + sorted((notebooks / "pt-BR").glob("*.ipynb"))


def under_notebooks(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name == "pt-BR" else path.name


def with_links(text: str, repo: str, ref: str) -> str:
    text = COLAB_LINK.sub(colab_link(repo, ref, ""), text)
    return DOCS_LINK.sub(f"https://github.com/{repo}/blob/{ref}/docs/", text)


def update_notebook(path: Path, repo: str, ref: str) -> bool:
    """Put the badge (last line of the first cell), the install cell (the second) and the links
    to the course's pages in place; True when the file changed."""
    nb = nbformat.read(path, as_version=4)
    intro = nb.cells[0].source.rstrip("\n").split("\n")
    if BADGE_IMAGE in intro[-1]:
        intro = intro[:-1]
    intro = "\n".join(intro).rstrip("\n") + "\n\n" + badge(repo, ref, under_notebooks(path))
    install = install_cell(repo, ref, "pt-BR" if path.parent.name == "pt-BR" else "en")
    changed = nb.cells[0].source != intro or nb.cells[1].source != install
    nb.cells[0].source, nb.cells[1].source = intro, install
    for cell in nb.cells:
        if cell.cell_type == "markdown" and with_links(cell.source, repo, ref) != cell.source:
            cell.source, changed = with_links(cell.source, repo, ref), True
    if changed:
        nbformat.write(nb, path)
    return changed


def update_readme(path: Path, repo: str, ref: str) -> bool:
    text = path.read_text(encoding="utf-8")
    new = with_links(text, repo, ref)
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
    pages = sorted(ROOT.glob("README*.md")) + sorted((ROOT / "docs").rglob("*.md"))
    changed += [p for p in pages if update_readme(p, repo, ref)]
    print(f"the course points at github.com/{repo} ({ref}); "
          f"{len(changed)} file(s) changed" + "".join(f"\n  {p.relative_to(ROOT)}" for p in changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
