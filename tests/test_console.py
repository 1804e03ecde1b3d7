"""console.py: library chatter goes to the log file, the project's own output stays on the console."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import console
from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys, warnings
    sys.path.insert(0, {root!r})
    import console

    log_file = console.setup_entry_point({log!r})
    logging.getLogger("ray.rllib").warning("\\x1b[33mlibrary chatter\\x1b[0m")
    os.write(2, b"C++ core worker line\\n")  # what Ray's C++ code writes to fd 2
    warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)
    logging.getLogger("fetch_data").info("project detail")
    logging.getLogger("fetch_data").warning("project warning")
    print("progress", console.number(float("nan"), ".3f", 6), console.number(7.251639073921419))
    raise SystemExit("fatal: said on the console")
    """
)


def test_routing_keeps_the_console_for_the_project(tmp_path):
    log = tmp_path / "run" / "demo.log"
    run = subprocess.run([sys.executable, "-W", "always", "-c", SCRIPT.format(root=str(ROOT), log=str(log))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stdout == "progress      – 7.252\n"
    # The console's stderr: the project's warning and the fatal message, nothing from libraries.
    assert "project warning" in run.stderr and "fatal: said on the console" in run.stderr
    for chatter in ("library chatter", "C++ core worker", "deprecation", "project detail"):
        assert chatter not in run.stderr
    text = log.read_text()
    for line in ("library chatter", "C++ core worker line", "a deprecation", "fetch_data: project detail"):
        assert line in text
    assert "\x1b[" not in text  # colour codes stripped


def test_numbers_for_people():
    assert console.number(None) == console.MISSING
    assert console.number(float("nan"), ".2f", 5) == "    –"
    assert console.number(1234.5678) == "1,234.568"
    assert console.strip_ansi("\x1b[0m12:36:21 \x1b[32mOK\x1b[0m") == "12:36:21 OK"
