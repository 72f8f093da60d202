"""The command layer: one module per subcommand, each parsing, validating and printing only.

Every module names its command (`NAME`) and offers `command`, the function typer registers;
`zstag.cli` builds the app from `COMMANDS` and turns errors into exit codes. Library packages
never import this one.
"""

from zstag.commands import bench, calibrate, ensemble, eval, explain, fetch, models, push, report, tag, train

COMMANDS = (tag, train, eval, calibrate, ensemble, explain, fetch, models, push, bench, report)
