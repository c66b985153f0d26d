"""The ``explainkit`` command: a thin click front end over the Python API.

Exit codes are a public contract (see :class:`explainkit.errors.ExitCode`): 0 ok, 1 findings,
2 usage/configuration error, 3 runtime error (including Ctrl-C and SIGTERM), 4 model refused. Errors
print one line on stderr; ``--debug`` adds the traceback. Data goes to stdout, logs and progress to
stderr. Every error and log line is made inert (:func:`explainkit.textsafe.escape`): it may quote
file names, class names or config values that an attacker chose.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import traceback

import click
from click.core import ParameterSource

from explainkit._version import __version__
from explainkit.errors import ExitCode, ExplainkitError
from explainkit.textsafe import escape

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="explainkit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """Explain trained PyTorch vision models, with statistics, and gate CI on spurious cues."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_InertFormatter("explainkit: %(levelname)s: %(message)s"))
    root = logging.getLogger("explainkit")
    root.handlers = [h for h in root.handlers if isinstance(h, logging.NullHandler)] + [handler]
    root.setLevel(level)


def _register_commands() -> None:
    from explainkit.cli import analyze as _analyze
    from explainkit.cli import check as _check
    from explainkit.cli import diff as _diff
    from explainkit.cli import discover as _discover
    from explainkit.cli import tools as _tools

    for module in (_analyze, _check, _diff, _discover, _tools):
        for command in module.COMMANDS:
            cli.add_command(command)


_register_commands()


class _InertFormatter(logging.Formatter):
    """Log records as one inert line (messages may quote untrusted names)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(" ".join(record.message.split()))
        return super().formatMessage(record)


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that staged outputs are cleaned up on the way out."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Terminated


def _from_environment(exc: click.ClickException) -> str:
    """`` (from environment variable NAME)`` when a bad option value came from the environment."""
    param, ctx = getattr(exc, "param", None), getattr(exc, "ctx", None)
    if param is None or ctx is None or ctx.get_parameter_source(param.name) is not ParameterSource.ENVIRONMENT:
        return ""
    return f" (from environment variable {param.envvar})"


def _one_line(exc: BaseException | str) -> str:
    text = str(exc).strip() or type(exc).__name__
    return escape(" ".join(text.split()))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every outcome to a documented exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code (also passed to ``sys.exit`` when run as a script).
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        result = cli.main(args=args, prog_name="explainkit", standalone_mode=False)
        code = int(result) if isinstance(result, int) else ExitCode.OK
    except click.exceptions.Exit as exc:  # --help, --version
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("explainkit: error: interrupted", err=True)
        code = ExitCode.RUNTIME
    except click.ClickException as exc:  # usage errors, bad option values
        click.echo(f"explainkit: error: {_one_line(exc.format_message())}{_from_environment(exc)}", err=True)
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(f"Try '{exc.ctx.command_path} --help'.", err=True)
        code = ExitCode.USAGE
    except ExplainkitError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"explainkit: error: {_one_line(exc)}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("explainkit: error: interrupted", err=True)
        code = ExitCode.RUNTIME
    except _Terminated:
        click.echo("explainkit: error: terminated (SIGTERM); the previous outputs were left as they were", err=True)
        code = ExitCode.RUNTIME
    except MemoryError:
        click.echo("explainkit: error: out of memory; lower --batch-size", err=True)
        code = ExitCode.RUNTIME
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"explainkit: error: internal error: {type(exc).__name__}: {_one_line(exc)} "
                   "(run with --debug for the traceback)", err=True)
        code = ExitCode.RUNTIME
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(code)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
