"""Errors that the command line turns into exit codes (GUIDE §1) instead of tracebacks."""

from __future__ import annotations


class ZstagError(Exception):
    """Base class: something the user can fix. Printed as one line, exit code 2."""

    exit_code = 2


class UsageError(ZstagError):
    """Bad arguments or bad input files (missing file, empty vocabulary, unknown method...)."""


class ModelError(ZstagError):
    """A model directory or weight file that cannot be used (unknown method, shape mismatch...)."""


class MissingWeightsError(ZstagError):
    """Pretrained weights are not in the cache; the message names the `zstag fetch` command."""


class ImageError(Exception):
    """One input image could not be read; carries the reason. Never stops a run."""


class OutputClosed(ZstagError):
    """Whoever read standard output stopped (`zstag tag ... | head`): a quiet end, exit 141 as for a
    process that SIGPIPE ended, the shell convention, rather than the 1 of a failure."""

    exit_code = 141
