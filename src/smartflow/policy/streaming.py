"""Hold-back windows for streamed text: scanning with rewrite, and placeholder restoring.

``StreamScanner`` holds back the last ``window_chars`` characters of a stream, because a
value at the end may still be incomplete (``jane.doe@exa`` waiting for ``mple.com``). Text
further back can no longer be part of a match, provided ``window_chars`` is at least the
length of the longest value plus the context its detector reads after it, so it is released
at once. Time to first token therefore grows by the window, plus the part of a value that
crosses the release point when there is one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence

from smartflow.policy.actions import detokenize
from smartflow.policy.detectors import Finding

__all__ = ["StreamDetokenizer", "StreamScanner"]

logger = logging.getLogger(__name__)

Detect = Callable[[str], Sequence[Finding]]
Transform = Callable[[str, Sequence[Finding]], str]


class StreamScanner:
    """Release streamed text once no match can still grow into it, rewritten by ``transform``.

    Each ``feed`` runs ``detect`` over the held text plus up to ``context_chars`` (default:
    the window) of text already released, so look-behind checks and keywords just before
    the held text still count. A finding that crosses the release point holds everything
    from its start. The held text never exceeds ``max_hold_chars`` (default: 16 windows).
    Past that, the finding is cut at the release point and each part is transformed on its
    own.

    The output equals ``transform(text, detect(text))`` over the whole text as long as no
    value, with its context, is longer than the window. The property tests check this for
    the built-in detectors with the redact, mask and tokenize actions.
    """

    def __init__(
        self,
        window_chars: int,
        detect: Detect,
        transform: Transform,
        *,
        context_chars: int | None = None,
        max_hold_chars: int | None = None,
    ) -> None:
        if window_chars < 1:
            raise ValueError(f"window_chars must be at least 1, got {window_chars}")
        self._window = window_chars
        self._context_limit = window_chars if context_chars is None else context_chars
        self._max_hold = max(window_chars, max_hold_chars or 16 * window_chars)
        self._detect = detect
        self._transform = transform
        self._context = ""
        self._pending = ""

    def feed(self, chunk: str) -> str:
        """Add ``chunk`` and return the text that is now safe to release, rewritten."""
        self._pending += chunk
        release_to = len(self._pending) - self._window
        if release_to <= 0:
            return ""
        findings = self._findings()
        cut = self._release_point(findings, release_to)
        return self._release(cut, findings)

    def flush(self) -> str:
        """Release all held text at the end of the stream, rewritten."""
        if not self._pending:
            return ""
        findings = self._findings()
        return self._release(len(self._pending), findings)

    def _findings(self) -> list[Finding]:
        """Return the findings in the held text, in held-text coordinates.

        A finding that starts in already released text (possible only for a value longer
        than the window, or one cut at ``max_hold_chars``) is clipped to its held part,
        which is then transformed as a finding of its own.
        """
        offset = len(self._context)
        scanned = self._context + self._pending
        findings: list[Finding] = []
        for finding in self._detect(scanned):
            if finding.end <= offset:
                continue
            start = max(finding.start, offset)
            findings.append(
                Finding(
                    finding.entity,
                    start - offset,
                    finding.end - offset,
                    scanned[start : finding.end],
                )
            )
        return findings

    def _release_point(self, findings: Sequence[Finding], release_to: int) -> int:
        cut = release_to
        limit = len(self._pending) - self._max_hold
        for finding in sorted(findings, key=lambda item: item.start, reverse=True):
            if finding.start < cut < finding.end:
                cut = finding.start
        if cut < limit:
            logger.debug("hold-back limit reached; cutting a finding at %d characters", limit)
            cut = limit
        return max(cut, 0)

    def _release(self, cut: int, findings: Sequence[Finding]) -> str:
        if cut == 0:
            return ""
        released = self._pending[:cut]
        inside: list[Finding] = []
        for finding in findings:
            if finding.end <= cut:
                inside.append(finding)
            elif finding.start < cut:
                inside.append(
                    Finding(finding.entity, finding.start, cut, released[finding.start :])
                )
        self._pending = self._pending[cut:]
        self._context = (
            (self._context + released)[-self._context_limit :] if self._context_limit else ""
        )
        return self._transform(released, inside)


# The start of a placeholder that the next chunk may complete: "<", "<EMA", "<EMAIL_1".
_PARTIAL_PLACEHOLDER = re.compile(r"<[A-Z0-9_]*$")


class StreamDetokenizer:
    """Restore placeholders in streamed text, even when one is split across chunks.

    Only a trailing ``<`` that may begin a placeholder of the vault is held back, so text
    without placeholders passes through without delay.
    """

    def __init__(self, vault: Mapping[str, str]) -> None:
        self._vault = vault
        self._pending = ""

    def feed(self, chunk: str) -> str:
        """Add ``chunk`` and return the text that is now safe to release, restored."""
        text = self._pending + chunk
        if not self._vault:
            return text
        # Read on every chunk, since the vault may still grow while the response streams.
        max_length = max(len(placeholder) for placeholder in self._vault)
        held_from = len(text)
        partial = _PARTIAL_PLACEHOLDER.search(text, max(0, len(text) - max_length))
        if partial is not None:
            held_from = partial.start()
        self._pending = text[held_from:]
        return detokenize(text[:held_from], self._vault)

    def flush(self) -> str:
        """Release the held text at the end of the stream."""
        text, self._pending = self._pending, ""
        return detokenize(text, self._vault)
