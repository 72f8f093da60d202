"""A command from a job's options dataclass: each option declared once.

The job's dataclass (zstag/jobs/options.py, zstag/training/options.py, zstag/bench/options.py)
says what an option is: its name, type and default. A command module adds only how it is spelt
on the command line, a `typer.Option` / `typer.Argument` per field (or a `Flag` when the command
line writes it differently, e.g. "3,5" for a list of ints). `from_options` joins the two into the
function typer registers, which builds the dataclass and hands it to the command's `run`.
Every command also takes -q/-v after its name, as `zstag -q tag ...` takes them before it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from zstag.core import console

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
_UNSET: Any = object()


@dataclass(frozen=True)
class Flag:
    """An option spelt differently on the command line than in its dataclass."""

    info: Any  # typer.Option(...) or typer.Argument(...)
    cli_type: Any  # what typer parses
    parse: Callable[[Any], Any]  # command-line value -> the dataclass's value; raises typer.BadParameter
    default: Any = _UNSET  # the command line's default, when the field's does not fit `cli_type`


@dataclass(frozen=True)
class Extra:
    """A command-line-only switch (how to print, what to list), handed to `run` as a keyword."""

    info: Any
    type: Any
    default: Any


QUIET = Extra(
    typer.Option("--quiet", "-q", help="No progress bars or news on stderr; warnings and errors still show."),
    bool,
    False,
)
VERBOSE = Extra(
    typer.Option("--verbose", "-v", help="More detail on stderr, and tracebacks for unexpected errors."), bool, False
)


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty


def from_options(
    options: type[T], flags: dict[str, Any], run: Callable[..., int | None], extras: dict[str, Extra] | None = None
) -> Callable[..., None]:
    """The typer command for `run(opts, **extras)`: parameters in the order of `flags`, then
    `extras`, then -q/-v; help from `run`'s docstring. Fields not in `flags` keep their defaults."""
    hints = typing.get_type_hints(options)
    fields = {f.name: f for f in dataclasses.fields(options)}
    unknown = set(flags) - set(fields)
    if unknown:
        raise TypeError(f"{options.__name__} has no field(s) {sorted(unknown)}")
    params, parsers = [], {}
    for name, spec in flags.items():
        if isinstance(spec, Flag):
            default = spec.default if spec.default is not _UNSET else _field_default(fields[name])
            params.append((name, Annotated[spec.cli_type, spec.info], default))
            parsers[name] = spec.parse
        else:
            params.append((name, Annotated[hints[name], spec], _field_default(fields[name])))
    switches = {**(extras or {}), "quiet": QUIET, "verbose": VERBOSE}
    params += [(name, Annotated[extra.type, extra.info], extra.default) for name, extra in switches.items()]

    def handler(**values: Any) -> None:
        _switches(values)
        given = {name: values.pop(name) for name in list(values) if name not in flags}
        opts = options(**{name: parsers[name](v) if name in parsers else v for name, v in values.items()})
        code = run(opts, **given)
        raise typer.Exit(code or 0)

    signature = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
        for name, kind, default in params
    ]
    handler.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    handler.__annotations__ = {name: kind for name, kind, _ in params}
    handler.__doc__ = run.__doc__
    handler.__name__ = run.__module__.rsplit(".", 1)[-1]
    return handler


def plain(function: Callable[..., None]) -> Callable[..., None]:
    """A command declared by its own typer signature (no job dataclass), with -q/-v added."""
    signature = inspect.signature(function, eval_str=True)
    switches = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[extra.type, extra.info], default=extra.default
        )
        for name, extra in (("quiet", QUIET), ("verbose", VERBOSE))
    ]

    @functools.wraps(function)
    def handler(**values: Any) -> None:
        _switches(values)
        function(**values)

    handler.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *switches])  # type: ignore[attr-defined]
    handler.__annotations__ = {p.name: p.annotation for p in handler.__signature__.parameters.values()}  # type: ignore[attr-defined]
    return handler


def _switches(values: dict[str, Any]) -> None:
    """Apply -q/-v given after the command's name (they add to those given before it)."""
    quiet, verbose = values.pop("quiet"), values.pop("verbose")
    if quiet or verbose:
        console.configure(quiet=quiet or None, verbose=verbose or None)


def split_list(text: str | None) -> list[str]:
    """ "a, b,c" -> ["a", "b", "c"]."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def choice(*values: str) -> dict[str, Any]:
    """typer.Option arguments that accept only `values` (naming the option when refusing) and
    offer them to shell completion."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in values:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(values)}")
        return value

    return {"callback": check, "autocompletion": lambda: list(values)}


def hint_terminal_stdin(inputs: list[str]) -> None:
    """Say so when '-' would read image paths from a terminal: without the hint the command
    seems to hang, waiting for lines a user did not know it wants."""
    if "-" in inputs and sys.stdin is not None and sys.stdin.isatty():
        console.info("reading image paths from the terminal, one per line; end with Ctrl-D")
