"""Reading policy documents from YAML files, including the packaged default policy."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from smartflow.core.errors import ConfigError
from smartflow.policy.documents import PolicyDocument, PolicyValidationError, parse_documents

__all__ = ["BUILTIN_DEFAULT", "DEFAULT_POLICY_PATH", "load_policy_files"]

logger = logging.getLogger(__name__)

DEFAULT_POLICY_PATH = Path(__file__).with_name("default.yaml")
BUILTIN_DEFAULT = "builtin:default"
"""The name under which ``policy_files`` refers to ``DEFAULT_POLICY_PATH``."""


def load_policy_files(paths: Sequence[str]) -> list[PolicyDocument]:
    """Read the policy documents of every file in ``paths``, in order.

    Raises:
        ConfigError: a file cannot be read, or its documents are invalid; the message names
            the file and every issue.
    """
    documents: list[PolicyDocument] = []
    for name in paths:
        path = DEFAULT_POLICY_PATH if name == BUILTIN_DEFAULT else Path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read policy file {path}: {exc.strerror}; fix the path in policy_files",
                param="policy_files",
            ) from exc
        try:
            documents.extend(parse_documents(text))
        except PolicyValidationError as exc:
            raise ConfigError(f"{path}: {exc}", param="policy_files") from exc
    names = [document.name for document in documents]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"policy_files define a document name twice ({', '.join(names)}); names must be "
            "unique across the files",
            param="policy_files",
        )
    logger.info("read %d policy documents from %s", len(documents), ", ".join(paths))
    return documents
