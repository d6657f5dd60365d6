"""The ``asyncsourcing`` command: run a projection, show how far it has got,
and rebuild its view as a new version.

Usage::

    asyncsourcing run --app examples.dogschool.application:DogSchool \\
        --projection examples.dogschool.projections:DogCountersProjection \\
        --view examples.dogschool.sqlite:SQLiteCounters --env-file .env
    asyncsourcing status --app ... --projection ... --view ... --env-file .env
    asyncsourcing versions --app ... --projection ... --view ... [--json]
    asyncsourcing rebuild --app ... --projection ... --view ... \\
        [--version N] [--max-lag EVENTS] [--no-switch]
    asyncsourcing reset --app ... --projection ... --view ... --version N --yes

``run`` processes the application's events into the view until SIGINT or
SIGTERM (exit status 0), ``--timeout`` (0) or an error of the projection (1),
with a progress line on stderr. ``status`` prints the view's position and its
lag behind the application (``--json``: one JSON object, the fields of
:class:`~asyncsourcing.cli.commands.Status`), without processing anything.

``versions`` lists the versions of the projection recorded in the view's
database (``--json``: a JSON list, an object per version, the fields of
:class:`~asyncsourcing.cli.versions.VersionRow`), the one that the
projection class declares marked ``*``. ``rebuild`` builds a version
(default: the class's) beside the serving one with a progress bar on
stderr until its lag is at most ``--max-lag``, then switches to it and says
what to do next; SIGINT or SIGTERM stop it (0), keeping what it has built
for the next rebuild; an error of the projection gives 1. ``reset`` drops
a version's tables, its tracking with them, and its dead-letter table; it
refuses without ``--yes`` (2), saying what it would drop. A
:class:`~asyncsourcing.versions.VersionError` (a version not recorded, a
runner that still runs the version to reset) gives 1. They need a
:class:`~asyncsourcing.projection.Projection` with a view in a database: an
event-sourced projection or a view in memory is a usage error (2).

Bad usage and configuration (a topic that cannot be imported, an unreadable
env file, a missing or invalid setting, a view that does not match the
backend) give exit status 2. Errors are one line on stderr, without a
traceback.

``--log-level`` sets the level of asyncsourcing's loggers and of the
top-level packages of the topics given; the others stay at WARNING.

Configuration comes from the environment, as for any application or
projection (``PERSISTENCE_MODULE``, ``SQLITE_DBNAME``, ...). ``--env-file``
adds ``KEY=VALUE`` lines to it; a variable set in the process environment
wins over the same variable in the file, as with docker and dotenv. (A
prefixed variable, ``DOGCOUNTERS_SQLITE_DBNAME``, still wins over a plain
one, wherever each comes from.)

Topics (``module:Class``) are imported with the current directory on
``sys.path``, as ``python -m`` does, so a project's own modules are found.
An :class:`~asyncsourcing.projection.EventSourcedProjection` is run without
``--view``: it records its own events and tracking.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from asyncsourcing import __version__
from asyncsourcing.cli.commands import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    describe,
    run_command,
    status_command,
)
from asyncsourcing.cli.config import (
    Target,
    UsageError,
    compose_env,
    construct_runner,
    read_env_file,
    resolve_target,
)
from asyncsourcing.cli.progress import (
    PIPE_INTERVAL,
    TTY_INTERVAL,
    ProgressLine,
    configure_logging,
)
from asyncsourcing.cli.versions import VERSION_COMMANDS, versions_main

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        msg = f"expected a number of seconds > 0, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _version_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a version, an integer >= 1, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _events(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"expected a number of events >= 0, not {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _add_progress_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval",
        type=_positive_float,
        metavar="SECONDS",
        help=(
            f"seconds between progress reports (default: {TTY_INTERVAL:g} on "
            f"a terminal, where the line is rewritten in place, else "
            f"{PIPE_INTERVAL:g})"
        ),
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="don't show the progress",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``asyncsourcing`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="asyncsourcing",
        description=(
            "Run asyncsourcing projections, show their progress, and rebuild "
            "their views."
        ),
        epilog=(
            "Configuration is read from the environment (PERSISTENCE_MODULE, "
            "SQLITE_DBNAME, POSTGRES_DBNAME, ...) and --env-file; the process "
            "environment wins over the file."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("projection")
    group.add_argument(
        "--app",
        required=True,
        metavar="MODULE:CLASS",
        help="the application class whose events are projected",
    )
    group.add_argument(
        "--projection",
        required=True,
        metavar="MODULE:CLASS",
        help="the Projection (or EventSourcedProjection) class",
    )
    group.add_argument(
        "--view",
        metavar="MODULE:CLASS",
        help="the view class, a TrackingRecorder (not for event-sourced projections)",
    )
    group.add_argument(
        "--env-file",
        metavar="PATH",
        help=(
            "read KEY=VALUE lines ('#' comments, optional 'export', quotes "
            "stripped) into the environment; variables already set win"
        ),
    )
    common.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help=(
            "level of the log messages on stderr of asyncsourcing and of the "
            "packages of --app, --projection and --view; other libraries' "
            "stay at WARNING (default: WARNING)"
        ),
    )

    run = commands.add_parser(
        "run",
        parents=[common],
        help="process the application's events into the view",
        description=(
            "Process the application's events into the view, from the position "
            "the view has recorded, until SIGINT or SIGTERM (exit status 0), "
            "--timeout (0) or an error of the projection (1). Shows the "
            "progress on stderr."
        ),
    )
    run.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="stop by itself after this many seconds",
    )
    _add_progress_options(run)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="print the view's position and its lag behind the application",
        description=(
            "Print the position the view has recorded and its lag behind the "
            "application, without processing anything."
        ),
    )
    status.add_argument(
        "--json",
        action="store_true",
        help=(
            "print one JSON object: application, projection, position, "
            "max_notification_id, lag"
        ),
    )

    versions = commands.add_parser(
        "versions",
        parents=[common],
        help="list the projection's versions, which serves, and their lag",
        description=(
            "List the versions of the projection recorded in the view's "
            "database: status (serving, building, retired), position, lag, "
            "replay mark, and when each was created and last switched. The "
            "version that the projection class declares is marked '*'."
        ),
    )
    versions.add_argument(
        "--json",
        action="store_true",
        help=(
            "print a JSON list, an object per version: projection, version, "
            "status, declared, application, position, lag, replay_until, "
            "created_at, switched_at"
        ),
    )

    rebuild = commands.add_parser(
        "rebuild",
        parents=[common],
        help="build a new version of the view beside the serving one, then switch",
        description=(
            "Build a version of the view (default: the projection class's) "
            "beside the serving one, showing the progress on stderr, until its "
            "lag is at most --max-lag events; then switch readers to it, in "
            "one transaction. SIGINT or SIGTERM stop it (exit status 0): what "
            "it has built is kept, and the next rebuild goes on from there. "
            "An error of the projection gives exit status 1."
        ),
    )
    rebuild.add_argument(
        "--version",
        type=_version_number,
        metavar="N",
        help="the version to build (default: the projection class's)",
    )
    rebuild.add_argument(
        "--max-lag",
        type=_events,
        default=100,
        metavar="EVENTS",
        help="switch once the version lags at most this many events (default: 100)",
    )
    rebuild.add_argument(
        "--no-switch",
        dest="switch",
        action="store_false",
        help="build the version up to --max-lag, but don't switch to it",
    )
    _add_progress_options(rebuild)

    reset = commands.add_parser(
        "reset",
        parents=[common],
        help="drop a version's view and tracking",
        description=(
            "Drop the tables of a version of the view (its tracking with them) "
            "and its dead-letter table. A version that serves keeps serving "
            "and processes everything again, as replays; another is forgotten. "
            "Without --yes, only says what it would drop (exit status 2)."
        ),
    )
    reset.add_argument(
        "--version",
        type=_version_number,
        required=True,
        metavar="N",
        help="the version to drop",
    )
    reset.add_argument(
        "--yes",
        action="store_true",
        help="drop them: without it, nothing is dropped",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 done, 1 error of the projection or its
    database (a :class:`~asyncsourcing.versions.VersionError` too), 2 bad
    usage or configuration (arguments, topics, env file, settings, a view
    that does not match the backend or keeps no versions, ``reset`` without
    ``--yes``), 130 cancelled. An
    error is one line on stderr; a traceback is logged only where it helps
    (an error of the projection, or of a constructor at ``DEBUG``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # --help, --version and argparse's usage errors, as a return value.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    # As `python -m` does, and uvicorn and gunicorn: topics may name modules
    # of the project in the current directory.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target = resolve_target(args, versioned=args.command in VERSION_COMMANDS)
        file_variables = read_env_file(args.env_file) if args.env_file else {}
    except UsageError as error:
        return _error(args.command, error, EXIT_USAGE)
    env = compose_env(file_variables, os.environ)
    progress = ProgressLine(sys.stderr)
    configure_logging(args.log_level, progress, _packages(args))
    try:
        return asyncio.run(_execute(args, target, env, progress))
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers were installed, or on Windows.
        return EXIT_INTERRUPTED
    except UsageError as error:
        return _error(args.command, error, EXIT_USAGE)
    except Exception as error:
        # A constructor of the application, projection or view failed (the
        # commands report their own errors): the traceback for who asks.
        logger.debug("asyncsourcing %s failed", args.command, exc_info=error)
        return _error(args.command, describe(error), EXIT_ERROR)


async def _execute(
    args: argparse.Namespace,
    target: Target,
    env: dict[str, str],
    progress: ProgressLine,
) -> int:
    # In the event loop: the recorders may make asyncio objects.
    if args.command in VERSION_COMMANDS:
        return await versions_main(args, target, env, progress)
    runner = construct_runner(target, env)
    if args.command == "run":
        return await run_command(args, runner, progress)
    return await status_command(runner, as_json=args.json)


def _packages(args: argparse.Namespace) -> set[str]:
    """The top-level packages of the topics given."""
    topics = (args.app, args.projection, args.view)
    return {topic.partition(":")[0].split(".")[0] for topic in topics if topic}


def _error(command: str, error: object, status: int) -> int:
    print(f"asyncsourcing {command}: error: {error}", file=sys.stderr)
    return status
