"""The `madapt` command line: parses arguments and prints; the work lives elsewhere.

Each command is a module in :mod:`madapt_cli.commands` with a ``register(app)`` function.
Exit codes (stable; see README.md): 0 success, 1 internal error, 2 bad input or options,
3 an embedding provider failed for good, 4 the environment failed (disk full, read-only,
permission denied), 5 a quality requirement was not met (`eval --require`, `plan`),
130 interrupted.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from madapt_cli import __version__
from madapt_cli.console import err
from madapt_cli.errors import EXIT_INTERRUPTED, MadaptError, environment_failure

try:  # typer 0.20+ parses with its own copy of click
    from typer._click.exceptions import UsageError as _TyperUsageError
except ImportError:  # pragma: no cover - older typer parses with click itself
    _TyperUsageError = click.UsageError
#: a malformed option of a command (wrong type, out of range, unknown): one line, exit 2
USAGE_ERRORS = (click.UsageError, _TyperUsageError)

COMMAND_MODULES = (
    "embed",
    "import_vectors",
    "info",
    "fit",
    "apply",
    "eval",
    "plan",
    "encode",
    "quickstart",
    "export",
    "serve",
)


class MadaptGroup(TyperGroup):
    """Turns a :class:`MadaptError` from any command, or an ``OSError`` the machine caused,
    into one line on stderr and its exit code, under the console script and typer's test
    runner alike. Any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MadaptError as error:
            _fail(ctx, error)
        except USAGE_ERRORS as error:
            _fail(ctx, MadaptError(error.format_message()))
        except OSError as error:
            failure = environment_failure(error)
            if failure is None:
                raise
            _fail(ctx, failure)
        except KeyboardInterrupt:
            err.print("interrupted; rerun the same command to resume", highlight=False)
            ctx.exit(EXIT_INTERRUPTED)


def _fail(ctx: click.Context, error: MadaptError) -> None:
    # escaped: a message quoting user data may contain [brackets] that rich reads as markup
    err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    ctx.exit(error.exit_code)


app = typer.Typer(
    cls=MadaptGroup,
    name="madapt",
    help="Make any text embedding cheaper to store and search with Matryoshka adaptors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"madapt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """madapt: train small adaptors so the first 64-256 dimensions keep retrieval quality."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"madapt_cli.commands.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
