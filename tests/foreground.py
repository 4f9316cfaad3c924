"""Run a command as a terminal's foreground job has it: with SIGINT at its default.

A test run started as a background job of a non-interactive shell (`make test &` in a
script, `nohup ... &`) passes SIGINT on ignored, and a Python started so never raises
KeyboardInterrupt, so a test of a command's Ctrl-C would hang. exec keeps the default
disposition this shim sets."""

from __future__ import annotations

import shutil
import sys

_SHIM = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
         "os.execv(sys.argv[1], sys.argv[1:])")


def as_foreground(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", _SHIM, shutil.which(argv[0]) or argv[0], *argv[1:]]
