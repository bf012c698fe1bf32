"""The click group and what every command shares: one-line errors, exit codes, stats lines."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import click

from edgegen.core.errors import EdgegenError


def fail(message: str, code: int = 2, quiet: bool = False) -> None:
    """One line on stderr, then exit: what is wrong and what to do, never a traceback. `quiet`:
    no line (a follower rank of a distributed run, where rank 0 says the same)."""
    if not quiet:
        click.echo(f"edgegen: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _follower() -> bool:
    from edgegen.runtimes.mlx.distributed import is_follower

    return is_follower()


_TERMINATED = threading.Event()


def _terminate(signum: int, _frame: Any) -> None:
    _TERMINATED.set()
    sys.exit(128 + signum)


def _exit_cleanly_on_sigterm() -> Any:
    """SIGTERM (a service manager, `kill`) becomes SystemExit(143), so that every `finally` runs:
    a half-written output is removed, as it is on Ctrl-C. Returns the handler it replaced."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, _terminate)
    return None


def _restore_sigterm(previous: Any) -> None:
    """Once the command has ended, SIGTERM does what it did before (in a process of ours: ends it
    quietly). Raised during the interpreter's exit (an atexit callback, while a launcher stops every
    rank) a SystemExit could only print a traceback, and every `finally` has run by then."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def _drop_stdout() -> None:
    """After a failed write to standard output (`> /dev/full`), the interpreter's own flush at exit
    would fail again and print a traceback-like warning: send what is left nowhere."""
    try:
        sys.stdout.flush()
    except OSError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives until exit)


class Group(click.Group):
    """Every failure of every command ends here: user errors (ours and click's usage errors) print
    one line and exit with code 2; Ctrl-C exits with 130."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        previous = _exit_cleanly_on_sigterm()
        try:
            return super().main(args, prog_name or "edgegen", complete_var, standalone_mode=False, **extra)
        except _NO_ARGS as exc:  # bare `edgegen` (or a bare group): the help, as written
            click.echo(exc.format_message(), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "edgegen"
            fail(f"{exc.format_message().rstrip('.')} (see `{path} --help`)", 2)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except EdgegenError as exc:
            from edgegen.runtimes.mlx.distributed import DistributedError

            fail(str(exc), exc.exit_code, quiet=_follower() and not isinstance(exc, DistributedError))
        except MemoryError:  # what no estimate caught: still one line, and every `finally` has run
            from edgegen.core.memory import out_of_memory_message

            fail(out_of_memory_message(), 2)
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("edgegen: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `edgegen generate ... | head`: the reader left; so do we
            sys.stderr.close()
            sys.exit(0)
        except OSError as exc:  # a path that cannot be written, a full disk: what the system said
            _drop_stdout()
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}; check the output path, its permissions and the free space", 2)
        except Exception:
            if _TERMINATED.is_set():  # the SystemExit of SIGTERM, raised inside an import, came out as another error
                sys.exit(143)
            raise
        finally:
            _restore_sigterm(previous)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgegen")
def main() -> None:
    """Run generative models on the device in front of you: MLX on Apple silicon, ONNX Runtime on
    CPUs and NPUs."""
