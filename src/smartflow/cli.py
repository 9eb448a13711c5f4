"""The ``smartflow`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from smartflow import __version__
from smartflow.auth.keys import KEY_PREFIX, generate_key, hash_key
from smartflow.config.schema import GatewayConfig, load_config, parse_config
from smartflow.core.errors import ConfigError
from smartflow.intercept.commands import (
    add_certs_commands,
    add_identity_command,
    run_certs,
    run_identity,
)
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
        "--config",
        metavar="FILE",
        help="path of the YAML configuration file (optional with --control-plane)",
    )
    gateway.add_argument("--host", help="address to listen on (overrides server.host)")
    gateway.add_argument("--port", type=int, help="TCP port to listen on (overrides server.port)")
    _add_link_options(gateway)
    _add_common(gateway)

    up = commands.add_parser(
        "up",
        help="run the hybrid stack: a control plane and two linked instances, with "
        "simulators for providers that have no credentials",
        description="Run a control plane, an on-prem instance (OpenAI, Azure OpenAI, "
        "Anthropic) and a cloud instance (Bedrock, Gemini, Cohere), linked so that each "
        "instance serves every model. Both instances enroll with the control plane and "
        "take their configuration from it. Each provider whose credential variables "
        "(OPENAI_API_KEY; AZURE_OPENAI_API_KEY with AZURE_OPENAI_ENDPOINT; "
        "ANTHROPIC_API_KEY; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION; "
        "GEMINI_API_KEY; CO_API_KEY) are unset is served by a local simulator on "
        "127.0.0.1.",
    )
    up.add_argument(
        "--host", default="127.0.0.1", help="address every service listens on (default: 127.0.0.1)"
    )
    up.add_argument(
        "--port", type=int, default=7775, help="TCP port of the on-prem instance (default: 7775)"
    )
    up.add_argument(
        "--cloud-port",
        type=int,
        default=7785,
        help="TCP port of the cloud instance (default: 7785)",
    )
    up.add_argument(
        "--control-plane-port",
        type=int,
        default=7778,
        help="TCP port of the control plane (default: 7778)",
    )
    up.add_argument(
        "--data-dir",
        default=os.environ.get("SMARTFLOW_DATA_DIR", ".smartflow"),
        metavar="DIR",
        help="directory for all state: the control plane's SQLite store and keys, and each "
        "instance's enrollment and last snapshot (default: .smartflow, or $SMARTFLOW_DATA_DIR)",
    )
    up.add_argument(
        "--postgres",
        metavar="URL",
        help="keep the control plane's store in PostgreSQL at this URL, such as "
        "postgresql://USER@127.0.0.1:5432/DB, instead of SQLite in the data directory",
    )
    up.add_argument(
        "--new-admin-token",
        action="store_true",
        help="register one more admin token in the control plane's store and print it once, "
        "for when the token printed at the first start is lost",
    )
    up.add_argument(
        "--dev-key",
        default=os.environ.get("SMARTFLOW_DEV_KEY"),
        metavar="KEY",
        help="development virtual key to accept, starting with sk-sf- (default: "
        "$SMARTFLOW_DEV_KEY, or a new random key printed at start)",
    )
    _add_common(up)

    control = commands.add_parser(
        "control-plane",
        help="run the control plane: central store, admin API and sync stream",
        description="Serve the control plane's admin API and the sync stream for gateway "
        "instances.",
    )
    control.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    control.add_argument("--port", type=int, default=7778, help="TCP port (default: 7778)")
    control.add_argument(
        "--state-dir",
        default=os.environ.get("SMARTFLOW_CONTROL_STATE_DIR", ".smartflow-control"),
        metavar="DIR",
        help="directory for the SQLite database and keys (default: .smartflow-control, or "
        "$SMARTFLOW_CONTROL_STATE_DIR)",
    )
    control.add_argument(
        "--database-url",
        default=os.environ.get("SMARTFLOW_CONTROL_DATABASE_URL"),
        metavar="URL",
        help="sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB (default: SQLite "
        "in the state directory, or $SMARTFLOW_CONTROL_DATABASE_URL)",
    )
    control.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate chain; serve HTTPS with --tls-key"
    )
    control.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    _add_common(control)

    keys = commands.add_parser("keys", help="create and hash virtual keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new_help = "print a new random virtual key and the SHA-256 to put in the configuration"
    key_commands.add_parser("new", help=new_help, description=new_help)
    hash_help = "print the SHA-256 of a key read from standard input, for the configuration"
    hash_parser = key_commands.add_parser("hash", help=hash_help, description=hash_help)
    hash_parser.set_defaults(stdin=True)
    add_identity_command(key_commands)
    _add_central_key_commands(key_commands)

    _add_policy_commands(commands)
    _add_admin_commands(commands)
    add_certs_commands(commands)
    return parser


def _add_link_options(gateway: argparse.ArgumentParser) -> None:
    link = gateway.add_argument_group(
        "control plane link",
        "Run as an instance linked to a control plane, which supplies its policies, "
        "providers, models and keys (the control_plane section of the configuration).",
    )
    link.add_argument(
        "--control-plane", metavar="URL", help="base URL of the control plane (control_plane.url)"
    )
    link.add_argument(
        "--enroll-token",
        metavar="TOKEN",
        help="one-time enrollment token, used on the first start only (default: "
        "$SMARTFLOW_ENROLL_TOKEN, which, unlike this option, other users cannot read with ps)",
    )
    link.add_argument("--name", help="instance name to enroll under (server.instance)")
    link.add_argument("--site", help="site to enroll into (server.site)")
    link.add_argument(
        "--state-dir", metavar="DIR", help="directory for the instance's state (state_dir)"
    )
    link.add_argument(
        "--control-plane-ca",
        metavar="FILE",
        help="PEM CA file that the control plane's certificate must chain to",
    )
    link.add_argument(
        "--control-plane-fingerprint",
        metavar="SHA256",
        help="pin the control plane's certificate by the SHA-256 of its DER form, in hex",
    )


def _gateway_config(args: argparse.Namespace) -> GatewayConfig:
    """Load the configuration file, or built-in defaults, with the link options applied."""
    if args.config is None and args.control_plane is None:
        raise ConfigError("give --config FILE, or --control-plane URL for a linked instance")
    config = load_config(args.config) if args.config else parse_config({}, "defaults")
    link_options = {
        "url": args.control_plane,
        "ca_file": args.control_plane_ca,
        "fingerprint": args.control_plane_fingerprint,
    }
    link_options = {key: value for key, value in link_options.items() if value is not None}
    server_options = {"instance": args.name, "site": args.site}
    server_options = {key: value for key, value in server_options.items() if value is not None}
    if not link_options and not server_options and args.state_dir is None:
        return config
    data = config.model_dump(mode="json", exclude_unset=True)
    if link_options:
        data["control_plane"] = {**data.get("control_plane", {}), **link_options}
    if server_options:
        data["server"] = {**data.get("server", {}), **server_options}
        if "control_plane" in data:
            # Command-line names win over names set in the file's section.
            for key in ("name", "site"):
                data["control_plane"].pop(key, None)
    if args.state_dir is not None:
        data["state_dir"] = args.state_dir
    return parse_config(data, args.config or "command-line options")


async def _run_gateway(args: argparse.Namespace) -> None:
    from smartflow.gateway.app import build_app, settle_heap, start_gateway  # noqa: PLC0415 - loads aiohttp only when serving

    config = _gateway_config(args)
    if config.control_plane is not None:
        await _run_linked_gateway(args, config)
        return
    app = build_app(config)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    running = await start_gateway(app, host, port, idle_timeout_s=config.server.idle_timeout_s)
    settle_heap()
    try:
        await _wait_for_signal()
    finally:
        await running.stop()


async def _run_linked_gateway(args: argparse.Namespace, config: GatewayConfig) -> None:
    from smartflow.gateway.app import settle_heap  # noqa: PLC0415 - loads aiohttp only when serving
    from smartflow.sync.linked import start_linked_gateway  # noqa: PLC0415 - loads aiohttp only when serving

    if args.enroll_token:
        logger.warning(
            "--enroll-token is visible to other users of this machine (ps) until enrollment "
            "ends; pass the token in SMARTFLOW_ENROLL_TOKEN instead"
        )
    linked = await start_linked_gateway(
        config, host=args.host, port=args.port, enroll_token=args.enroll_token
    )
    settle_heap()
    try:
        await _wait_for_signal()
    finally:
        await linked.stop()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stop signal received")


async def _run_control_plane(args: argparse.Namespace) -> None:
    from smartflow.control import ControlPlaneSettings, start_control_plane  # noqa: PLC0415 - loads SQLAlchemy only here

    try:
        settings = ControlPlaneSettings(
            host=args.host,
            port=args.port,
            state_dir=Path(args.state_dir),
            database_url=args.database_url,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid control plane options: {exc.errors()[0]['msg']}") from exc
    running = await start_control_plane(settings)
    token = running.plane.initial_admin_token
    if token is not None:
        # On the console only, never in a log line or a file.
        sys.stdout.write(
            f"Admin token (role admin, shown only this once; keep it in a secret store):\n{token}\n"
        )
        sys.stdout.flush()
    try:
        await _wait_for_signal()
    finally:
        await running.stop()


async def _run_up(args: argparse.Namespace) -> None:
    from smartflow.gateway.app import settle_heap  # noqa: PLC0415 - loads aiohttp only when serving
    from smartflow.hybrid import HybridPorts, start_hybrid_stack  # noqa: PLC0415 - loads the simulators only for `up`

    key = args.dev_key or generate_key()
    if not key.startswith(KEY_PREFIX) or len(key) < 20:
        raise ConfigError(
            f"the development key (--dev-key or $SMARTFLOW_DEV_KEY) must start with {KEY_PREFIX} "
            "and be at least 20 characters long"
        )
    ports = HybridPorts(
        control_plane=args.control_plane_port, on_prem=args.port, cloud=args.cloud_port
    )
    if 0 in (ports.on_prem, ports.cloud):
        raise ConfigError(
            "--port and --cloud-port must be fixed ports: each instance tells "
            "the other where to forward requests"
        )
    stack = await start_hybrid_stack(
        host=args.host,
        ports=ports,
        data_dir=Path(args.data_dir),
        dev_key=key,
        database_url=args.postgres,
        new_admin_token=args.new_admin_token,
    )
    sys.stdout.write(stack.summary(show_key=args.dev_key is None) + "\n")
    sys.stdout.flush()
    settle_heap()
    try:
        await _wait_for_signal()
    finally:
        await stack.stop()


def _add_central_key_commands(
    key_commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``create``, ``list`` and ``delete``, which act on the control plane's keys."""
    central = argparse.ArgumentParser(add_help=False)
    central.add_argument(
        "--control-plane",
        default=os.environ.get(CONTROL_PLANE_URL_ENV) or None,
        metavar="URL",
        help=f"base URL of the control plane (default: ${CONTROL_PLANE_URL_ENV}); required",
    )
    _add_token_options(central, "the control plane")
    text = (
        "create a virtual key at the control plane, which sends it to every linked instance, "
        "and print the key once"
    )
    create = key_commands.add_parser("create", parents=[central], help=text, description=text)
    create.add_argument("name", help="name of the key, unique at the control plane")
    create.add_argument(
        "--team", default="default", help="an existing team at the control plane (default: default)"
    )
    create.add_argument("--user", help="user the key belongs to")
    create.add_argument(
        "--label", action="append", default=[], help="a label for compliance rules (repeatable)"
    )
    create.add_argument(
        "--strict-params",
        action="store_true",
        help="reject requests whose parameters would be changed for the target model",
    )
    text = "list the virtual keys at the control plane (names, teams and users, never keys)"
    key_commands.add_parser("list", parents=[central], help=text, description=text)
    text = "delete a virtual key at the control plane; linked instances stop accepting it"
    delete = key_commands.add_parser("delete", parents=[central], help=text, description=text)
    delete.add_argument("name", help="name of the key")


def _central_keys(args: argparse.Namespace) -> str:
    if not args.control_plane:
        raise _CommandFailed(
            f"--control-plane (or ${CONTROL_PLANE_URL_ENV}) is required: virtual keys are "
            "managed at the control plane",
            EXIT_USAGE,
        )
    client = _client(args, args.control_plane)
    name = getattr(args, "name", "")
    if args.keys_command == "list":
        items = client.call("GET", "/v1/keys")["items"]
        rows = [f"{'name':<24} {'team':<16} user"]
        rows += [f"{k['name']:<24} {k['team']:<16} {k.get('user') or '-'}" for k in items]
        return "\n".join(rows)
    path = "/v1/keys/" + urllib.parse.quote(name, safe="")
    if args.keys_command == "delete":
        client.call("DELETE", path)
        return f"deleted virtual key {name}"
    key = generate_key()
    body = {
        "team": args.team,
        "user": args.user,
        "labels": args.label,
        "strict_params": args.strict_params,
        "sha256": hash_key(key),
    }
    client.call("PUT", path, json.dumps(body).encode(), "application/json")
    return f"created virtual key {name} (team {args.team}); it is shown only now:\n{key}"


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command in ("create", "list", "delete"):
        try:
            output = _central_keys(args)
        except _CommandFailed as exc:
            sys.stderr.write(f"smartflow keys {args.keys_command}: {exc.message}\n")
            return exc.exit_code
        sys.stdout.write(output + "\n")
        return EXIT_OK
    if args.keys_command == "identity":
        return run_identity(args)
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


# --- smartflow policy / smartflow admin -------------------------------------------------

DEFAULT_ADMIN_URL = "http://127.0.0.1:7775"
DEFAULT_TOKEN_ENV = "SMARTFLOW_ADMIN_TOKEN"
CONTROL_PLANE_URL_ENV = "SMARTFLOW_CONTROL_PLANE_URL"
ADMIN_TOKEN_PREFIX = "sf-admin-"

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2


class _CommandFailed(Exception):
    """A policy command that failed, with its exit code and the message to print."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _connection_options() -> argparse.ArgumentParser:
    """Return the options shared by every `smartflow policy` action, as a parent parser."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url",
        default=DEFAULT_ADMIN_URL,
        help=f"base URL of the running gateway (default: {DEFAULT_ADMIN_URL})",
    )
    connection.add_argument(
        "--control-plane",
        default=os.environ.get(CONTROL_PLANE_URL_ENV) or None,
        metavar="URL",
        help="base URL of the control plane; apply and list then act on the central "
        "policies, which reach every linked instance (default: $"
        f"{CONTROL_PLANE_URL_ENV}). validate checks the files locally",
    )
    _add_token_options(connection, "the gateway")
    return connection


def _add_token_options(parser: argparse.ArgumentParser, service: str) -> None:
    """Add ``--token-env`` and ``--timeout``, shared by the commands that call an admin API."""
    parser.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help=f"environment variable that contains the admin token (default: {DEFAULT_TOKEN_ENV})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help=f"maximum time to wait for {service}, in seconds (default: 30)",
    )


def _add_policy_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connection = _connection_options()
    policy = commands.add_parser(
        "policy",
        help="validate, apply, diff, list and roll back policies on a running gateway",
        description="Manage the policy versions of a running gateway through its admin API. "
        "Exit status: 0 success, 1 rejected by the gateway (invalid policy, unknown version, "
        "missing permission), 2 usage or connection error. The format is documented in "
        "docs/policy.md.",
    )
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    for name, text in (
        ("validate", "check YAML policy files without applying them"),
        ("apply", "apply YAML policy files as the next policy version"),
    ):
        parser = actions.add_parser(name, parents=[connection], help=text, description=text)
        parser.add_argument(
            "files",
            nargs="+",
            metavar="FILE",
            help="YAML file with one or more policy documents separated by '---' ('-' reads "
            "standard input); all files together form one policy set",
        )

    diff_help = "show the unified diff between two policy versions"
    diff = actions.add_parser("diff", parents=[connection], help=diff_help, description=diff_help)
    diff.add_argument(
        "--from", dest="from_version", type=int, required=True, metavar="N", help="older version"
    )
    diff.add_argument(
        "--to", dest="to_version", type=int, required=True, metavar="M", help="newer version"
    )

    list_help = "list the policy versions, oldest first; '*' marks the active one"
    actions.add_parser("list", parents=[connection], help=list_help, description=list_help)

    rollback_help = "make a new version with the documents of an earlier one"
    rollback = actions.add_parser(
        "rollback", parents=[connection], help=rollback_help, description=rollback_help
    )
    rollback.add_argument(
        "--to",
        dest="to_version",
        type=int,
        required=True,
        metavar="N",
        help="version whose documents to restore",
    )


def _add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = commands.add_parser("admin", help="create admin API tokens")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    token = admin_commands.add_parser("token", help="create admin API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    new_help = "print a new random admin token and the admin_tokens entry for the configuration"
    new = token_commands.add_parser("new", help=new_help, description=new_help)
    new.add_argument(
        "--name",
        default="admin",
        help="name of the token, recorded as the "
        "author of the versions it applies (default: admin)",
    )
    new.add_argument(
        "--role",
        default="admin",
        choices=["admin", "policy_editor", "viewer"],
        help="role of the token (default: admin)",
    )


def _admin(args: argparse.Namespace) -> int:
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = hash_key(token)
    entry = {"admin_tokens": [{"name": args.name, "sha256": digest, "role": args.role}]}
    sys.stdout.write(
        f"token:  {token}\nsha256: {digest}\n\n"
        "Add this entry to the configuration and keep the token itself out of it:\n"
        + yaml.safe_dump(entry, sort_keys=False)
    )
    return EXIT_OK


class _AdminClient:
    """A small HTTP client for the admin API; it ignores proxy variables."""

    def __init__(self, url: str, token: str, timeout: float, *, option: str = "--url") -> None:
        self.url = url.rstrip("/")
        self._option = option
        """The option that gave the URL, named in the message when it cannot be reached."""
        self._token = token
        self._timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> Any:
        """Send one request and return its JSON body.

        Raises:
            _CommandFailed: the gateway rejected the request (exit 1), or could not be
                reached, failed, or sent something other than JSON (exit 2).
        """
        request = urllib.request.Request(self.url + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return self._decode(response.status, response.read())
        except urllib.error.HTTPError as exc:
            payload = self._decode(exc.code, exc.read())
            raise _CommandFailed(
                _describe_error(payload, exc.code),
                EXIT_REJECTED if 400 <= exc.code < 500 else EXIT_USAGE,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _CommandFailed(
                f"cannot connect to {self.url}: {reason}. Check that the "
                f"{'control plane' if self._option == '--control-plane' else 'gateway'} is "
                f"running and {self._option} points at it",
                EXIT_USAGE,
            ) from None

    def _decode(self, status: int, raw: bytes) -> Any:
        if status == 204 and not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise _CommandFailed(
                f"{self.url} returned HTTP {status} with a body that is not JSON; is --url the "
                "gateway's address?",
                EXIT_USAGE,
            ) from None


def _describe_error(payload: Any, status: int) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return f"the gateway returned HTTP {status}"
    issues = error.get("issues")
    if isinstance(issues, list) and issues:
        lines = []
        for issue in issues:
            where = " ".join(part for part in (issue.get("document"), issue.get("path")) if part)
            lines.append(f"  {where}: {issue.get('message')}")
        return "invalid policy:\n" + "\n".join(lines)
    return str(error.get("message") or f"the gateway returned HTTP {status}")


def _read_policy_files(files: Sequence[str]) -> bytes:
    """Read and join the files as one multi-document YAML stream.

    Each file is parsed for YAML syntax here, so an error names the file and its line.
    """
    texts: list[str] = []
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _CommandFailed(f"cannot read {name}: {exc}", EXIT_USAGE) from None
        try:
            for _ in yaml.compose_all(text, Loader=yaml.SafeLoader):
                pass
        except yaml.YAMLError as exc:
            raise _CommandFailed(f"{name}: invalid YAML: {exc}", EXIT_REJECTED) from None
        texts.append(text)
    return "\n---\n".join(texts).encode("utf-8")


def _client(args: argparse.Namespace, url: str | None = None) -> _AdminClient:
    token = os.environ.get(args.token_env, "").strip()
    if not token:
        raise _CommandFailed(
            f"the environment variable {args.token_env} is not set: put the admin token in it, "
            "or name another variable with --token-env",
            EXIT_USAGE,
        )
    option = "--control-plane" if url else "--url"
    return _AdminClient(url or args.url, token, args.timeout, option=option)


def _format_versions(payload: dict[str, Any]) -> str:
    versions = payload.get("versions") or []
    if not versions:
        return "no policy versions yet; create one with `smartflow policy apply FILE`\n"
    header = ("", "VERSION", "CREATED", "AUTHOR", "SHA256", "DOCUMENTS")
    rows = [header]
    for item in versions:
        documents = ", ".join(item["documents"])
        if item.get("rollback_of") is not None:
            documents += f" (rollback to {item['rollback_of']})"
        marker = "*" if item["version"] == payload.get("active") else ""
        rows.append(
            (
                marker,
                str(item["version"]),
                item["created_at"],
                item["author"],
                item["sha256"][:12],
                documents,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _run_policy(args: argparse.Namespace) -> str:
    """Run one `smartflow policy` action and return what to print."""
    command = args.policy_command
    if command in ("validate", "apply"):
        body = _read_policy_files(args.files)
        client = _client(args)
        path = "/admin/policies/validate" if command == "validate" else "/admin/policies"
        result = client.call("POST", path, body, "application/yaml")
        names = ", ".join(result["documents"])
        if command == "validate":
            return f"valid: {len(result['documents'])} document(s): {names}\n"
        return (
            f"applied as version {result['version']} (documents: {names}; sha256 "
            f"{result['sha256'][:12]})\n"
        )
    client = _client(args)
    if command == "list":
        return _format_versions(client.call("GET", "/admin/policies"))
    if command == "diff":
        query = f"?from={args.from_version}&to={args.to_version}"
        text = str(client.call("GET", "/admin/policies/diff" + query)["diff"])
        if not text:
            return f"versions {args.from_version} and {args.to_version} have the same documents\n"
        return text
    body = json.dumps({"version": args.to_version}).encode("utf-8")
    result = client.call("POST", "/admin/policies/rollback", body, "application/json")
    return (
        f"rolled back to version {args.to_version}: now version {result['version']} "
        f"(documents: {', '.join(result['documents'])})\n"
    )


def _run_central_policy(args: argparse.Namespace) -> str:
    """Run one `smartflow policy` action against the control plane's central policies."""
    from smartflow.policy.documents import PolicyValidationError, parse_documents  # noqa: PLC0415 - only here
    from smartflow.policy.engine import compile_policies  # noqa: PLC0415 - loads detectors only here

    command = args.policy_command
    if command in ("diff", "rollback"):
        raise _CommandFailed(
            f"{command} works on a gateway's own policy versions; the control plane keeps "
            "versions per policy: see GET /v1/policies/NAME/versions, and apply the document "
            "to restore with `smartflow policy apply --control-plane URL FILE`",
            EXIT_USAGE,
        )
    if command == "list":
        items = _client(args, args.control_plane).call("GET", "/v1/policies")["items"]
        if not items:
            return "no policies yet; apply one with `smartflow policy apply FILE`\n"
        lines = [f"{'NAME':<32} {'VERSION':>7}  {'AUTHOR':<20} CREATED"]
        for item in items:
            lines.append(
                f"{item['name']:<32} {item['version']:>7}  {item['author']:<20} "
                f"{item['created_at']}"
            )
        return "\n".join(lines) + "\n"
    text = _read_policy_files(args.files).decode("utf-8")
    try:
        documents = parse_documents(text)
        compile_policies(documents)
    except PolicyValidationError as exc:
        issues = "\n".join(
            f"  {issue.document or ''} {issue.path or ''}: {issue.message}" for issue in exc.issues
        )
        raise _CommandFailed(f"invalid policy:\n{issues}", EXIT_REJECTED) from None
    names = ", ".join(document.name for document in documents)
    if command == "validate":
        return f"valid: {len(documents)} document(s): {names}\n"
    client = _client(args, args.control_plane)
    lines = []
    for document in documents:
        body = json.dumps(document.to_dict()).encode("utf-8")
        result = client.call("PUT", f"/v1/policies/{document.name}", body, "application/json")
        lines.append(f"applied {result['name']} as its version {result['version']}")
    head = client.call("GET", "/healthz").get("version")
    lines.append(f"control plane snapshot version: {head}")
    return "\n".join(lines) + "\n"


def _policy(args: argparse.Namespace) -> int:
    try:
        output = _run_central_policy(args) if args.control_plane else _run_policy(args)
    except _CommandFailed as exc:
        sys.stderr.write(f"smartflow policy {args.policy_command}: {exc.message}\n")
        return exc.exit_code
    except (KeyError, TypeError) as exc:
        sys.stderr.write(
            f"smartflow policy {args.policy_command}: unexpected response from {args.url}: "
            f"missing or invalid field {exc}; is --url the gateway's address?\n"
        )
        return EXIT_USAGE
    sys.stdout.write(output)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "certs":
        return run_certs(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "policy":
        return _policy(args)
    if args.command == "admin":
        return _admin(args)
    log_setup.setup(args.log_level)
    runners = {"gateway": _run_gateway, "up": _run_up, "control-plane": _run_control_plane}
    runner = runners[args.command]
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
