"""The Portuguese lessons are the English ones in other words: the same code, cell by cell.

Only markdown, comments, docstrings and printed labels may differ: the strings a learner reads
in print(), in a plot's titles and labels, and the lesson's language (dreamlab.set_language).
Everything that computes (settings, prompts, seeds, file names) is the same, so the English
lessons' tests and the Colab rehearsal vouch for the Portuguese code too.
"""

import ast
import re

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from dreamlab.lessons import lesson_paths

LABEL_CALLS = {"print", "set_title", "set_xlabel", "set_ylabel", "suptitle", "title", "xlabel", "ylabel",
               "text", "set_language"}
LABEL_KEYWORDS = {"title", "titles", "label", "labels", "xlabel", "ylabel", "caption", "captions"}


class Labels(ast.NodeTransformer):
    """Blanks out the strings that are words for the learner, and docstrings."""

    def blank(self, node):
        for child in ast.walk(node):
            if isinstance(child, ast.Constant) and isinstance(child.value, str):
                child.value = "<words>"
        return node

    def visit_Call(self, node):
        name = getattr(node.func, "id", getattr(node.func, "attr", None))
        if name in LABEL_CALLS:
            for arg in [*node.args, *node.keywords]:
                self.blank(arg)
        for keyword in node.keywords:
            if keyword.arg in LABEL_KEYWORDS:
                self.blank(keyword)
        return self.generic_visit(node)

    def generic_visit(self, node):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)):
            body[0].value.value = "<docstring>"
        return super().generic_visit(node)


def code_of(source: str) -> str:
    """A code cell as Python (IPython's magics made calls), less what is words."""
    tree = ast.parse(TransformerManager().transform_cell(source))
    return ast.dump(Labels().visit(tree))


def pairs():
    english = {p.name[:2]: p for p in lesson_paths()}
    portuguese = {p.name[:2]: p for p in lesson_paths(language="pt-BR")}
    return [(english[n], portuguese.get(n)) for n in sorted(english)]


def test_every_lesson_has_its_portuguese_twin():
    assert [(en.name[:2], pt and pt.name[:2]) for en, pt in pairs()] == [(n, n) for n in
                                                                       ["00", "01", "02", "03", "04", "05"]]


@pytest.mark.parametrize("en, pt", pairs(), ids=lambda p: p and p.stem)
def test_the_code_is_the_same_cell_by_cell(en, pt):
    english = [c for c in nbformat.read(en, as_version=4).cells if c.cell_type == "code"]
    portuguese = [c for c in nbformat.read(pt, as_version=4).cells if c.cell_type == "code"]
    assert len(english) == len(portuguese), (f"{en.name}: {len(english)} code cells, "
                                             f"{pt.name}: {len(portuguese)}")
    for number, (a, b) in enumerate(zip(english, portuguese), 1):
        assert code_of(a.source) == code_of(b.source), (
            f"code cell {number} differs in more than comments and labels:\n--- {en.name}\n{a.source}\n"
            f"--- {pt.name}\n{b.source}")
        assert a.metadata.get("tags") == b.metadata.get("tags")
    assert 'dreamlab.set_language("pt-BR")' in "".join(c.source for c in portuguese)


def test_the_comparison_sees_a_changed_setting_but_not_changed_words():
    cell = 'steps = 400  # steps\nprint(f"{steps} steps")\nshow(images, titles=["before", "after"])'
    words = 'steps = 400  # passos\nprint(f"{steps} passos")\nshow(images, titles=["antes", "depois"])'
    setting = 'steps = 300  # steps\nprint(f"{steps} steps")\nshow(images, titles=["before", "after"])'
    assert code_of(cell) == code_of(words)
    assert code_of(cell) != code_of(setting)
    assert code_of('prompt = "a photo of sks dog"') != code_of('prompt = "uma foto de sks dog"')


def test_the_portuguese_lessons_speak_portuguese_and_link_the_glossary():
    for en, pt in pairs():
        words = " ".join(c.source for c in nbformat.read(pt, as_version=4).cells if c.cell_type == "markdown")
        common = len(re.findall(r"\b(você|não|são|modelo|imagens|para|uma)\b", words))
        assert common > 20, f"{pt.name} does not read as Portuguese"
        assert "docs/glossary.md" in words, f"{pt.name} does not link the glossary"
        assert "docs/glossary.md" in " ".join(c.source for c in nbformat.read(en, as_version=4).cells
                                              if c.cell_type == "markdown"), f"{en.name}: no glossary link"
