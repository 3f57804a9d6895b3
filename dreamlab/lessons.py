"""Run the course's notebooks top to bottom, offline on the CPU, and keep the results.

    python -m dreamlab.lessons                # every lesson, in English and in Portuguese
                                              # -> build/lessons/*.html, build/lessons/pt-BR/*.html
    python -m dreamlab.lessons 03             # only lessons whose file name contains "03"
    python -m dreamlab.lessons --language pt-BR   # one language
    python -m dreamlab.lessons --jobs 1       # one lesson at a time: each one's own time

Each lesson runs in a fresh kernel with DREAMLAB_OFFLINE=1, which makes its parameter cell
pick the offline model and the CPU; nothing else in the notebooks changes.

Two lessons run at once where the machine has two cores or more (--jobs), each kernel with its
share of the cores: a lesson that uses what an earlier one made (WAITS_FOR) starts when that one
has ended. The toy model's training gains only about 20 % from a second thread, and the lessons'
imports and memory estimates are one thread's work, so two lessons side by side finish the
course sooner than one lesson with every core (on this course's 2-core machine, about 265 s a
language instead of 340).
"""

import argparse
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

# The lessons live in the course's checkout, beside the package (they are not installed with it)
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LANGUAGES = {"en": "", "pt-BR": "pt-BR"}  # each language's folder under notebooks/
# What a lesson uses from earlier ones: lesson 3 tops up the class images lesson 2 began (the same
# folder), lessons 4 and 5 take lesson 3's class images and fine-tuned model
WAITS_FOR = {"03": "02", "04": "03", "05": "03"}


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
               answers: str | None = None, threads: int | None = None) -> Path:
    """Execute one notebook offline; write the executed copy (and an HTML page) to out_dir, also
    when a cell fails (the copy then shows the error at the cell where it stopped), and raise
    LessonFailed then.

    `output` is the lessons' dreamlab.OUTPUT (class images, fine-tuned model), shared by
    lessons run one after another; default $DREAMLAB_OUTPUT, else out_dir/output. `timeout`:
    seconds a cell may take (None: no limit, so that a slow or busy machine is only slow).
    `answers`: "solution" or "wrong" fills the exercises' answer cells (default: left to the learner).
    `threads`: the kernel's torch threads at most (default: one per core).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.update(DREAMLAB_OFFLINE="1", DREAMLAB_OUTPUT=str(output or os.environ.get("DREAMLAB_OUTPUT")
                                                          or out_dir / "output"))
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # torch's own count of threads, read as it starts
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


def timed_run(path: Path, out: Path, options: dict) -> str:
    """One lesson (in a process of its own when two run at once): its line of the summary."""
    start = time.perf_counter()
    try:  # each lesson is written as it finishes; a failed one too, and the next ones still run
        executed = run_lesson(path, out, **options)
        return f"{path.name}: ok, {time.perf_counter() - start:.0f} s -> {executed.with_suffix('.html')}"
    except LessonFailed as e:
        return (f"{path.name}: FAILED after {time.perf_counter() - start:.0f} s ({e}); "
                f"see {e.executed.with_suffix('.html')}")


def run_lessons(paths: list[Path], out: Path, jobs: int, options: dict):
    """Runs the lessons `jobs` at a time, each when the lesson it waits for has ended; yields each
    one's summary line as it ends. The lessons others wait for are started first."""
    if jobs == 1:  # one after another, in teaching order
        for path in paths:
            yield timed_run(path, out, options)
        return
    waited_for = set(WAITS_FOR.values())
    pending = sorted(paths, key=lambda p: p.name[:2] not in waited_for)  # (a stable sort)
    running = {}
    # "spawn": each job a fresh interpreter, as a kernel's parent should be (no forked threads)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            unfinished = {p.name[:2] for p in [*pending, *running.values()]}
            ready = [p for p in pending if WAITS_FOR.get(p.name[:2]) not in unfinished]
            for path in ready[:jobs - len(running)]:
                pending.remove(path)
                running[pool.submit(timed_run, path, out, options)] = path
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                del running[future]
                yield future.result()


def main(argv: list[str] | None = None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="parts of lesson file names (default: all)")
    parser.add_argument("--language", choices=[*LANGUAGES, "all"], default="all")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "lessons")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help="seconds a cell may take (default: no limit)")
    parser.add_argument("--answers", choices=["solution", "wrong"], default=None,
                        help="fill the exercises' answer cells (instructors: the solutions)")
    parser.add_argument("--jobs", type=int, default=min(2, cores),
                        help="lessons run at once, each on its share of the cores (default: 2, "
                             "1 on a one-core machine; 1 gives each lesson's own time, as a learner waits)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more")
    options = dict(timeout=args.cell_timeout, answers=args.answers,
                   threads=max(1, cores // args.jobs) if args.jobs > 1 else None)
    summary = []
    for language in LANGUAGES if args.language == "all" else [args.language]:
        out, start = args.out / LANGUAGES[language], time.perf_counter()  # each its own output folder
        lines = []
        for line in run_lessons(lesson_paths(args.lessons, language), out, args.jobs, options):
            print(line, flush=True)
            lines.append(line)
        summary += sorted(lines)  # (in teaching order: each line starts with its lesson's file name)
        summary.append(f"the {language} lessons: {time.perf_counter() - start:.0f} s"
                       + (f" ({args.jobs} at a time)" if args.jobs > 1 else ""))
        print(summary[-1], flush=True)
    print()
    print("\n".join(summary))
    print("Open the .html files in a browser, or the .ipynb files in Jupyter.")
    return 1 if any(": FAILED" in line for line in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
