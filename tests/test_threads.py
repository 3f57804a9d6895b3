"""colab.cpu_threads: torch gets the cores other programs leave free, so that a busy machine makes
the offline lessons slower, not ten times slower."""

import subprocess
import sys
import time

from dreamlab import colab


def test_threads_follow_the_runnable_tasks(tmp_path):
    loadavg = tmp_path / "loadavg"
    for running, threads in [(1, 4), (2, 3), (4, 1), (9, 1)]:  # (this process is one of the running)
        loadavg.write_text(f"0.50 0.40 0.30 {running}/312 4242\n")
        assert colab.cpu_threads(4, loadavg) == threads
    loadavg.write_text("not a loadavg file")
    assert colab.cpu_threads(4, loadavg) == 4  # nothing to go by: every core
    assert colab.cpu_threads(4, tmp_path / "missing") == 4


def test_a_program_spinning_on_a_core_takes_it():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # always runnable
    try:
        time.sleep(0.5)
        assert colab.cpu_threads(64) <= 63
    finally:
        spin.kill()
        spin.wait()
