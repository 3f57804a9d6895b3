"""Run the course's notebooks top to bottom, offline on the CPU, and keep the results.

    python -m dreamlab.lessons                # all lessons -> build/lessons/*.ipynb and *.html
    python -m dreamlab.lessons 03             # only lessons whose file name contains "03"

Each lesson runs in a fresh kernel with DREAMLAB_OFFLINE=1, which makes its parameter cell
pick the offline model and the CPU; nothing else in the notebooks changes.
"""

import argparse
import os
import sys
import time
from pathlib import Path

# The lessons live in the course's checkout, beside the package (they are not installed with it)
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def lesson_paths(patterns: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if patterns:
        paths = [p for p in paths if any(pat in p.name for pat in patterns)]
    return paths


def run_lesson(path: Path, out_dir: Path, output: Path | None = None, timeout: int = 900) -> Path:
    """Execute one notebook offline; write the executed copy (and an HTML page) to out_dir.

    `output` is the lessons' dreamlab.OUTPUT (class images, fine-tuned model), shared by
    lessons run one after another; default $DREAMLAB_OUTPUT, else out_dir/output.
    """
    import nbformat
    from nbclient import NotebookClient

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.update(DREAMLAB_OFFLINE="1", DREAMLAB_OUTPUT=str(output or os.environ.get("DREAMLAB_OUTPUT")
                                                          or out_dir / "output"))
    try:  # the kernel inherits this process's environment
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
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
    return executed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="parts of lesson file names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "lessons")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    for path in lesson_paths(args.lessons):
        t = time.perf_counter()
        executed = run_lesson(path, args.out)
        print(f"{path.name}: {time.perf_counter() - t:.0f} s -> {executed}", flush=True)
    print(f"all lessons: {time.perf_counter() - start:.0f} s. Open the .html files in a browser, "
          f"or the .ipynb files in Jupyter.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
