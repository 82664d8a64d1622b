"""The `platepipe` command line."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import warnings

from platepipe.components.progress import show
from platepipe.pipeline.commands import checks, kubeflow, model, serving
from platepipe.pipeline.commands.common import config_args
from platepipe.pipeline.config import ConfigError


EPILOG = """Every command takes --config FILE (YAML, only the keys you change) and --set KEY=VALUE
(repeatable, e.g. --set train.max_iters=200). Defaults: configs/default.yaml."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platepipe",
        description="Train a licence-plate reader and take it to a GPU KServe endpoint, as a Kubeflow pipeline.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"platepipe {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = config_args()
    for commands in (model, serving, kubeflow, checks):
        commands.register(sub, common)

    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("platepipe")
    except PackageNotFoundError:
        return "dev"


def _quiet_libraries() -> None:
    """mmdet and torch repeat deprecation warnings on every forward pass; they are not the user's concern."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.cuda.amp.autocast.*")
    warnings.filterwarnings("ignore", category=UserWarning, message=".*torch.meshgrid.*")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    show()  # the library's progress lines on standard output
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    with _stop_on_sigterm():
        return _call(args)


@contextlib.contextmanager
def _stop_on_sigterm():
    """`kill PID` (a job scheduler, a timeout) stops the command the way Ctrl-C does, so that what it started
    (fake-gcs-server, TorchServe, pipeline steps) is stopped too."""
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _call(args) -> int:
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileExistsError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"platepipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"platepipe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
