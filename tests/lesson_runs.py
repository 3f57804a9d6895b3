"""One lesson run offline, as `make lessons` runs it, and what must be true of it."""

import nbformat

from dreamlab.lessons import run_lesson


def check_lesson_run(path, answers, out, lesson_output):
    """Runs the lesson with its exercises' "solution" or "wrong" answers filled in: no error, at
    least three pictures, its HTML page, and each exercise's check saying right to a solution and
    giving its hint to a wrong answer."""
    executed = nbformat.read(run_lesson(path, out, output=lesson_output, answers=answers), as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3, f"{path.name} shows only {len(pictures)} pictures"
    assert (out / path.with_suffix(".html").name).exists()
    cells = executed.cells
    checks = [cells[i + 1] for i, c in enumerate(cells) if "answer" in c.metadata.get("tags", [])]
    said = ["".join(o.get("text", "") for o in c.outputs) for c in checks]
    mark = "✅" if answers == "solution" else "❌"
    assert checks and all(text.startswith(mark) for text in said), said
