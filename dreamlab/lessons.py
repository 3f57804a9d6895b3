"""Run the course's notebooks top to bottom, offline on the CPU, and keep the results.

    python -m dreamlab.lessons                # every lesson, in English and in Portuguese
                                              # -> build/lessons/*.html, build/lessons/pt-BR/*.html
    python -m dreamlab.lessons 03             # only lessons whose file name contains "03"
    python -m dreamlab.lessons --language pt-BR   # one language

Each lesson runs in a fresh kernel with DREAMLAB_OFFLINE=1, which makes its parameter cell
pick the offline model and the CPU; nothing else in the notebooks changes.
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path

# The lessons live in the course's checkout, beside the package (they are not installed with it)
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LANGUAGES = {"en": "", "pt-BR": "pt-BR"}  # each language's folder under notebooks/


def lesson_paths(patterns: list[str] | None = None, language: str = "en") -> list[Path]:
    paths = sorted((NOTEBOOKS / LANGUAGES[language]).glob("[0-9][0-9]_*.ipynb"))
    if patterns:
        paths = [p for p in paths if any(pat in p.name for pat in patterns)]
    return paths


def with_answers(nb, answers: str):
    """The exercises' answer cells (tagged "answer") filled with their "solution" or a "wrong"
    answer, both kept in the cell's metadata, where a learner does not see them."""
    for cell in nb.cells:
        if "answer" in cell.metadata.get("tags", []):
            cell.source = cell.metadata["dreamlab"][answers]
    return nb


def run_lesson(path: Path, out_dir: Path, output: Path | None = None, timeout: int | None = None,
               answers: str | None = None) -> Path:
    """Execute one notebook offline; write the executed copy (and an HTML page) to out_dir, also
    when a cell fails (the copy then shows the error at the cell where it stopped), and raise
    LessonFailed then.

    `output` is the lessons' dreamlab.OUTPUT (class images, fine-tuned model), shared by
    lessons run one after another; default $DREAMLAB_OUTPUT, else out_dir/output. `timeout`:
    seconds a cell may take (None: no limit, so that a slow or busy machine is only slow).
    `answers`: "solution" or "wrong" fills the exercises' answer cells (default: left to the learner).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.update(DREAMLAB_OFFLINE="1", DREAMLAB_OUTPUT=str(output or os.environ.get("DREAMLAB_OUTPUT")
                                                          or out_dir / "output"))
    nb, failure = nbformat.read(path, as_version=4), None
    if answers:
        nb = with_answers(nb, answers)
    try:  # the kernel inherits this process's environment. Its own log (a note that it talks over
        # local TCP unencrypted, ...) says nothing to a learner: errors only
        NotebookClient(nb, timeout=timeout, kernel_name="python3", extra_arguments=["--log-level=ERROR"],
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except (CellExecutionError, DeadKernelError, TimeoutError) as e:
        failure = e
    finally:
        os.environ.clear()
        os.environ.update(saved)
    executed = out_dir / path.name
    nbformat.write(nb, executed)
    try:
        from nbconvert import HTMLExporter

        html, _ = HTMLExporter().from_notebook_node(nb)
        executed.with_suffix(".html").write_text(html, encoding="utf-8")
    except ImportError:
        pass  # the executed .ipynb holds the same pictures
    if failure is not None:
        raise LessonFailed(executed, failure)
    return executed


class LessonFailed(Exception):
    """A lesson stopped at a cell: `executed` is its copy, which shows where and why."""

    def __init__(self, executed: Path, error: Exception):
        self.executed, self.error = executed, error
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # without the traceback's terminal colours
        lines = [line for line in plain.strip().splitlines() if line.strip()]
        super().__init__(f"{executed.name} stopped: {(lines or [type(error).__name__])[-1][:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="parts of lesson file names (default: all)")
    parser.add_argument("--language", choices=[*LANGUAGES, "all"], default="all")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "lessons")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help="seconds a cell may take (default: no limit)")
    parser.add_argument("--answers", choices=["solution", "wrong"], default=None,
                        help="fill the exercises' answer cells (instructors: the solutions)")
    args = parser.parse_args(argv)
    summary = []
    for language in LANGUAGES if args.language == "all" else [args.language]:
        out, start = args.out / LANGUAGES[language], time.perf_counter()  # each its own output folder
        for path in lesson_paths(args.lessons, language):
            t = time.perf_counter()
            try:  # each lesson is written as it finishes; a failed one too, and the next one still runs
                executed = run_lesson(path, out, timeout=args.cell_timeout, answers=args.answers)
                seconds = time.perf_counter() - t
                summary.append(f"{path.name}: ok, {seconds:.0f} s -> {executed.with_suffix('.html')}")
            except LessonFailed as e:
                summary.append(f"{path.name}: FAILED after {time.perf_counter() - t:.0f} s ({e}); "
                               f"see {e.executed.with_suffix('.html')}")
            print(summary[-1], flush=True)
        summary.append(f"the {language} lessons: {time.perf_counter() - start:.0f} s")
        print(summary[-1], flush=True)
    print()
    print("\n".join(summary))
    print("Open the .html files in a browser, or the .ipynb files in Jupyter.")
    return 1 if any(": FAILED" in line for line in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
