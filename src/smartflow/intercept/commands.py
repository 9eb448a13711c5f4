"""``smartflow certs``: a private CA and leaf certificates for the interception listener,
and ``smartflow keys identity``: the identity hash of a provider key."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from smartflow.core.errors import ConfigError
from smartflow.intercept.certs import (
    CA_CERT_FILE,
    CA_DAYS,
    CA_KEY_FILE,
    LEAF_DAYS,
    create_ca,
    issue_leaf,
    load_ca,
    read_passphrase,
)
from smartflow.intercept.identity import identity_hash

__all__ = ["add_certs_commands", "add_identity_command", "run_certs", "run_identity"]

DEFAULT_CERTS_DIR = ".smartflow/certs"


def _passphrase_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--passphrase-env",
        metavar="NAME",
        help=f"environment variable that contains the passphrase {what}",
    )
    parser.add_argument(
        "--passphrase-file", metavar="FILE", help=f"file that contains the passphrase {what}"
    )


def add_certs_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser(
        "certs",
        help="create a private CA and issue certificates for the interception listener",
        description="Create a private certificate authority for labs and tests, and issue "
        "server certificates from it. Production installs use certificates from the "
        "organisation's own CA instead. See docs/interception.md.",
    )
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    directory = argparse.ArgumentParser(add_help=False)
    directory.add_argument(
        "--dir",
        default=os.environ.get("SMARTFLOW_CERTS_DIR", DEFAULT_CERTS_DIR),
        metavar="DIR",
        help=f"directory of the CA files {CA_CERT_FILE} and {CA_KEY_FILE} (default: "
        f"{DEFAULT_CERTS_DIR}, or $SMARTFLOW_CERTS_DIR)",
    )

    init_help = "create the CA: a certificate to install on devices, and its private key"
    init = actions.add_parser("init", parents=[directory], help=init_help, description=init_help)
    init.add_argument(
        "--name", default="Smartflow interception CA", help="common name of the CA certificate"
    )
    init.add_argument(
        "--days", type=int, default=CA_DAYS, help=f"validity in days (default: {CA_DAYS})"
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    _passphrase_options(init, "that encrypts the CA key (default: the key is not encrypted)")

    issue_help = "issue a server certificate for one or more host names from the CA"
    issue = actions.add_parser(
        "issue", parents=[directory], help=issue_help, description=issue_help
    )
    issue.add_argument(
        "hosts", nargs="+", metavar="HOST", help="host names, such as api.openai.com"
    )
    issue.add_argument(
        "--out",
        metavar="DIR",
        help="directory for HOST.pem and HOST-key.pem (default: the CA directory)",
    )
    issue.add_argument(
        "--days", type=int, default=LEAF_DAYS, help=f"validity in days (default: {LEAF_DAYS})"
    )
    _passphrase_options(issue, "of an encrypted CA key")


def run_certs(args: argparse.Namespace) -> int:
    try:
        passphrase = read_passphrase(args.passphrase_env, args.passphrase_file)
        directory = Path(args.dir)
        if args.days < 1:
            raise ConfigError("--days must be at least 1")
        if args.certs_command == "init":
            create_ca(
                directory,
                name=args.name,
                days=args.days,
                passphrase=passphrase,
                overwrite=args.force,
            )
            sys.stdout.write(
                f"CA certificate: {directory / CA_CERT_FILE}  (install this on devices)\n"
                f"CA key:         {directory / CA_KEY_FILE}  (mode 0600"
                + (", encrypted" if passphrase else ", not encrypted")
                + "; keep it off the gateway host in production)\n"
            )
            return 0
        ca = load_ca(directory, passphrase)
        leaf = issue_leaf(ca, args.hosts, Path(args.out or directory), days=args.days)
    except ConfigError as exc:
        sys.stderr.write(f"smartflow certs {args.certs_command}: {exc}\n")
        return 2
    sys.stdout.write(
        f"certificate: {leaf.cert_file}\nkey:         {leaf.key_file}  (mode 0600)\n"
        f"names:       {', '.join(leaf.hosts)}\n\n"
        "Add it to the configuration:\n"
        "intercept:\n"
        "  certificates:\n"
        f"    - cert_file: {leaf.cert_file}\n"
        f"      key_file: {leaf.key_file}\n"
    )
    return 0


def add_identity_command(keys: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "print the identity hash of a provider key read from standard input, for "
        "intercept.identity.mappings"
    )
    parser = keys.add_parser("identity", help=text, description=text)
    parser.add_argument(
        "--salt-env",
        metavar="NAME",
        help="environment variable that contains the salt (the one in intercept.identity)",
    )
    parser.add_argument("--salt-file", metavar="FILE", help="file that contains the salt")


def run_identity(args: argparse.Namespace) -> int:
    try:
        salt = read_passphrase(args.salt_env, args.salt_file)
    except ConfigError as exc:
        sys.stderr.write(f"smartflow keys identity: {exc}\n")
        return 2
    if salt is None:
        sys.stderr.write("smartflow keys identity: name the salt with --salt-env or --salt-file\n")
        return 2
    key = sys.stdin.readline().strip()
    if not key:
        sys.stderr.write("smartflow keys identity: no key on standard input\n")
        return 2
    sys.stdout.write(identity_hash(salt, key) + "\n")
    return 0
