"""The ``smartflow`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from smartflow import __version__
from smartflow.auth.keys import KEY_PREFIX, generate_key, hash_key
from smartflow.config.schema import load_config
from smartflow.core.errors import ConfigError
from smartflow.telemetry import logging as log_setup

__all__ = ["main"]

logger = logging.getLogger("smartflow.cli")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SMARTFLOW_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="minimum level of log records written to standard error (default: INFO, or "
        "$SMARTFLOW_LOG_LEVEL)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartflow",
        description="Smartflow AI gateway: OpenAI- and Anthropic-compatible endpoints in front "
        "of several LLM providers.",
    )
    parser.add_argument("--version", action="version", version=f"smartflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gateway = commands.add_parser(
        "gateway",
        help="run one gateway instance from a configuration file",
        description="Run one gateway instance. The configuration file is documented in "
        "docs/configuration.md.",
    )
    gateway.add_argument(
        "--config", required=True, metavar="FILE", help="path of the YAML configuration file"
    )
    gateway.add_argument("--host", help="address to listen on (overrides server.host)")
    gateway.add_argument("--port", type=int, help="TCP port to listen on (overrides server.port)")
    _add_common(gateway)

    up = commands.add_parser(
        "up",
        help="run the local stack on built-in defaults, with simulators for providers "
        "that have no credentials",
        description="Run a gateway on built-in defaults. Each provider whose credential "
        "variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, AZURE_OPENAI_API_KEY with "
        "AZURE_OPENAI_ENDPOINT) is unset is served by a local simulator on 127.0.0.1.",
    )
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    up.add_argument(
        "--port", type=int, default=7775, help="TCP port of the gateway (default: 7775)"
    )
    up.add_argument(
        "--dev-key",
        default=os.environ.get("SMARTFLOW_DEV_KEY"),
        metavar="KEY",
        help="development virtual key to accept, starting with sk-sf- (default: "
        "$SMARTFLOW_DEV_KEY, or a new random key printed at start)",
    )
    _add_common(up)

    keys = commands.add_parser("keys", help="create and hash virtual keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new_help = "print a new random virtual key and the SHA-256 to put in the configuration"
    key_commands.add_parser("new", help=new_help, description=new_help)
    hash_help = "print the SHA-256 of a key read from standard input, for the configuration"
    hash_parser = key_commands.add_parser("hash", help=hash_help, description=hash_help)
    hash_parser.set_defaults(stdin=True)
    return parser


async def _run_gateway(args: argparse.Namespace) -> None:
    from smartflow.gateway.app import build_app, start_gateway  # noqa: PLC0415 - loads aiohttp only when serving

    config = load_config(args.config)
    app = build_app(config)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    running = await start_gateway(app, host, port)
    try:
        await _wait_for_signal()
    finally:
        await running.stop()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stop signal received")


async def _run_up(args: argparse.Namespace) -> None:
    from smartflow.stack import start_local_stack  # noqa: PLC0415 - loads the simulators only for `up`

    key = args.dev_key or generate_key()
    if not key.startswith(KEY_PREFIX) or len(key) < 20:
        raise ConfigError(
            f"the development key (--dev-key or $SMARTFLOW_DEV_KEY) must start with {KEY_PREFIX} "
            "and be at least 20 characters long"
        )
    stack = await start_local_stack(host=args.host, port=args.port, dev_key=key)
    sys.stdout.write(stack.summary(show_key=args.dev_key is None) + "\n")
    sys.stdout.flush()
    try:
        await _wait_for_signal()
    finally:
        await stack.stop()


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command == "new":
        key = generate_key()
        sys.stdout.write(f"key:    {key}\nsha256: {hash_key(key)}\n")
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        sys.stderr.write("smartflow keys hash: no key on standard input\n")
        return 2
    if not key.startswith(KEY_PREFIX):
        sys.stderr.write(f"smartflow keys hash: warning: virtual keys start with {KEY_PREFIX}\n")
    sys.stdout.write(hash_key(key) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        return _keys(args)
    log_setup.setup(args.log_level)
    runner = _run_gateway if args.command == "gateway" else _run_up
    try:
        try:
            import uvloop  # noqa: PLC0415 - optional speed-up
        except ImportError:
            asyncio.run(runner(args))
        else:
            uvloop.run(runner(args))
    except ConfigError as exc:
        sys.stderr.write(f"smartflow: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(
            f"smartflow: cannot start: {exc}\nIf the port is in use, choose another with --port.\n"
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
