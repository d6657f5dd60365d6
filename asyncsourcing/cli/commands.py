"""The ``run`` and ``status`` commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from asyncsourcing.cli.config import Target, construct_runner
from asyncsourcing.cli.progress import (
    PIPE_INTERVAL,
    TTY_INTERVAL,
    ProgressLine,
    RateMeter,
    format_progress,
    take_sample,
)
from asyncsourcing.persistence import TrackingRecorder
from asyncsourcing.projection import BaseProjectionRunner

__all__ = ["run_command", "status_command"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
# 128 + SIGINT, the shell's status for a command killed by Ctrl-C.
EXIT_INTERRUPTED = 130


async def report_progress(
    runner: BaseProjectionRunner[Any],
    recorder: TrackingRecorder,
    topics: Sequence[str],
    progress: ProgressLine,
    interval: float,
) -> None:
    """Show the progress every ``interval`` seconds, until cancelled."""
    meter = RateMeter()
    while True:
        try:
            sample = await take_sample(runner.app, recorder, topics)
        except Exception as error:
            # Progress is a courtesy: a failed read must not stop the runner,
            # whose own errors surface from run_forever().
            logger.warning("Cannot read the progress: %s", error)
        else:
            meter.add(sample)
            progress.show(format_progress(sample, meter))
        await asyncio.sleep(interval)


async def run_command(
    args: argparse.Namespace,
    target: Target,
    env: dict[str, str],
    progress: ProgressLine,
) -> int:
    """Run the projection until a signal, the timeout or an error."""
    interval = args.interval or (TTY_INTERVAL if progress.is_tty else PIPE_INTERVAL)
    parts = construct_runner(target, env)
    runner, recorder, topics = parts.runner, parts.recorder, parts.topics
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals_received: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        signals_received.append(signum.name)
        if len(signals_received) == 1:
            logger.info("%s received: stopping after the event in hand", signum.name)
            runner.stop()
        elif main_task is not None:
            # A second signal: the user will not wait for a clean stop.
            logger.warning("%s received again: cancelling", signum.name)
            main_task.cancel()

    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not on Windows' event loops: Ctrl-C raises KeyboardInterrupt there.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, on_signal, signum)
            handled.append(signum)
    try:
        async with runner:
            logger.info("Running %s of %s", parts.projection_name, runner.app_name)
            reporter = None
            if args.progress:
                reporter = asyncio.create_task(
                    report_progress(runner, recorder, topics, progress, interval)
                )
            try:
                await runner.run_forever(timeout=args.timeout)
            finally:
                if reporter is not None:
                    reporter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reporter
                    # The last word, after an error too: where the view stopped.
                    with contextlib.suppress(Exception):
                        sample = await take_sample(runner.app, recorder, topics)
                        progress.show(
                            f"stopped at position {sample.position:,}, "
                            f"lag {sample.lag:,} events"
                        )
    except asyncio.CancelledError:
        progress.finish()
        return EXIT_INTERRUPTED
    except Exception as error:
        progress.finish()
        print(f"asyncsourcing run: error: {_describe(error)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    progress.finish()
    return EXIT_OK


async def status_command(target: Target, env: dict[str, str]) -> int:
    """Print the view's position and lag, processing nothing."""
    # A runner that is never started constructs the app and the view
    # exactly as `run` does, from the same environment.
    parts = construct_runner(target, env)
    runner = parts.runner
    try:
        sample = await take_sample(runner.app, parts.recorder, parts.topics)
    except Exception as error:
        print(f"asyncsourcing status: error: {_describe(error)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        await runner.aclose()
    rows = [
        ("application", f"{runner.app_name} (last notification {sample.head:,})"),
        ("projection", parts.projection_name),
        ("position", f"{sample.position:,}"),
        ("lag", f"{sample.lag:,} events"),
    ]
    for key, value in rows:
        print(f"{key + ':':<13}{value}")
    return EXIT_OK


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
