"""The `edgekd` command: thin Typer commands over the typed library.

Every EdgekdError becomes one red line on stderr and its exit code, here and nowhere else.
EDGEKD_DEBUG=1 lets the traceback through instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from edgekd import __version__
from edgekd.errors import EdgekdError, RuntimeMissingError

# What `pip install "edgekd[train]"` adds to the device install (pyproject.toml).
WORKSTATION_MODULES = ("torch", "torchvision", "onnx", "matplotlib")

console = Console()
err_console = Console(stderr=True)


def print_error(err: Exception) -> None:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)  # one line, never wrapped


class _ErrorMappingGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekdError as e:
            if os.environ.get("EDGEKD_DEBUG"):
                raise
            print_error(e)
            raise typer.Exit(e.exit_code) from None
        except ModuleNotFoundError as e:
            # The device install (`pip install edgekd`) has no torch: a workstation command says so.
            if e.name not in WORKSTATION_MODULES or os.environ.get("EDGEKD_DEBUG"):
                raise
            err = RuntimeMissingError(f"'edgekd {ctx.invoked_subcommand}' needs {e.name}, part of the workstation "
                                      "install: pip install \"edgekd[train]\" (the device install runs bench, "
                                      "targets and inspect of bundles only)")
            print_error(err)
            raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    cls=_ErrorMappingGroup,
    help="Data-free distillation of image classifiers for edge devices: distill, export, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.print(f"edgekd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Data-free distillation of image classifiers for edge devices."""


def _register() -> None:
    # Importing the command modules attaches their commands to `app`.
    from edgekd.cli import bench_cmd, build_cmd, distill_cmd, export_cmd, info_cmd  # noqa: F401


_register()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
