"""The command line: the app built from zstag/commands, and errors turned into exit codes.

Machine output goes to stdout, everything else to stderr. Exit codes (GUIDE §1): 0 done; 2 bad
usage or bad input files (one line, no traceback); 3 finished but some inputs were unreadable;
1 anything else; 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from zstag import __version__
from zstag.commands import COMMANDS
from zstag.commands.build import QUIET, VERBOSE
from zstag.core import console
from zstag.core.errors import OutputClosed, ZstagError

try:  # typer 0.2x parses with its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

app = typer.Typer(
    name="zstag",
    help="Zero-shot image tagging: tag photos with any vocabulary, train and evaluate taggers.\n\n"
    "Example: zstag tag ./photos --labels vocab.txt > tags.jsonl",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for _module in COMMANDS:
    app.command(_module.NAME)(_module.command)


def _version(value: bool) -> None:
    if value:
        print(f"zstag {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    quiet: Annotated[bool, QUIET.info] = False,
    verbose: Annotated[bool, VERBOSE.info] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    console.configure(quiet=quiet, verbose=verbose)


def _usage(exc: click_errors.UsageError) -> int:
    """One line naming what was wrong, and where help is; exit 2. Bare `zstag` prints the help."""
    if isinstance(exc, click_errors.NoArgsIsHelpError):
        print(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return 0
    message = " ".join(exc.format_message().split())
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    console.error(message + where)
    return 2


def main() -> None:
    """Entry point: run the app, turning known errors into one line and an exit code."""
    import warnings

    from PIL import Image

    warnings.showwarning = lambda message, *args, **kwargs: console.warn(str(message))
    # Images past Pillow's limit are refused by the decoder; between the limit and twice it Pillow
    # only warns, which would print once per such image without adding anything.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        code = app(prog_name="zstag", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except OutputClosed as exc:
        # Quiet, and with stdout pointed at nothing so the interpreter's last flush cannot complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(exc.exit_code)
    except ZstagError as exc:
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:
        sys.exit(_usage(exc))
    except click_errors.ClickException as exc:
        console.error(" ".join(exc.format_message().split()))
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # anything unexpected
        if "--verbose" in sys.argv or "-v" in sys.argv:
            raise
        console.error(f"{type(exc).__name__}: {exc} (run with --verbose for the traceback)")
        sys.exit(1)
