"""One request's pass through the policies: request rewrite, residency, response rewrite.

A ``PolicyRun`` owns the request's token vault, so placeholders made for the request are
restored in its response, and its ``Decision``, which counts entity types and names rules
but never contains a value.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from smartflow.core.errors import PolicyViolation, SmartflowError
from smartflow.core.types import ChatRequest, Message, Part, TextPart, ToolCall
from smartflow.policy.actions import Action, EntityBlocked, TokenVault, apply_actions, detokenize
from smartflow.policy.decision import (
    Decision,
    PolicyEvaluationFailed,
    ResidencyRejected,
    RuleHit,
)
from smartflow.policy.detectors import Finding
from smartflow.policy.streaming import StreamDetokenizer, StreamScanner
from smartflow.providers.base import Deployment

if TYPE_CHECKING:
    from smartflow.policy.engine import Evaluator, Plan, RequestContext

__all__ = ["PolicyRun", "TextChannel", "split_findings", "walk_strings"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST = "request"
RESPONSE = "response"


class ContentBlocked(PolicyViolation):
    """A content rule (deny list, regex or topic) fired on enforced text."""

    def __init__(self, policy: str, rule: str, direction: str) -> None:
        super().__init__(
            f"Blocked by policy rule {policy}/{rule}: the {direction} matches content rule "
            f"{rule!r} of policy {policy!r}."
        )
        self.rule = f"{policy}/{rule}"


class _EscapedVault(Mapping[str, str]):
    """The vault with each value escaped for the inside of a JSON string."""

    def __init__(self, vault: Mapping[str, str]) -> None:
        self._vault = vault

    def __getitem__(self, placeholder: str) -> str:
        return orjson.dumps(self._vault[placeholder]).decode()[1:-1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._vault)

    def __len__(self) -> int:
        return len(self._vault)


def walk_strings(value: Any, rewrite: Callable[[str], str]) -> Any:
    """Return ``value`` (parsed JSON) with ``rewrite`` applied to every string value.

    Object keys stay as they are. The same object comes back when nothing changed.
    """
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        changed = {key: walk_strings(item, rewrite) for key, item in value.items()}
        same = all(changed[key] is item for key, item in value.items())
        return value if same else changed
    if isinstance(value, list):
        items = [walk_strings(item, rewrite) for item in value]
        same = all(new is old for new, old in zip(items, value, strict=True))
        return value if same else items
    return value


class PolicyRun:
    """The policy state of one request and its response."""

    def __init__(
        self, evaluator: Evaluator, plan: Plan, context: RequestContext, request_id: str = ""
    ) -> None:
        self.evaluator = evaluator
        self.plan = plan
        self.context = context
        self.request_id = request_id
        self.vault = TokenVault()
        self.decision = Decision(
            policies=plan.names, audit_policies=plan.audit_names, labels=set(context.labels)
        )
        self.request: ChatRequest | None = None
        self._original: ChatRequest | None = None
        self._labels = set(context.labels)
        """Labels that compliance rules act on: caller labels and enforced entity labels."""
        self._memo: dict[str, str] = {}
        self._bypass_request = False

    @property
    def active(self) -> bool:
        """Whether any policy applies to this request."""
        return bool(self.plan.documents)

    @property
    def checks_response(self) -> bool:
        """Whether the response must be read: a response rule applies or a value was tokenized."""
        return self.plan.checks_response or bool(self.vault)

    @property
    def request_changed(self) -> bool:
        """Whether the request rules rewrote any text of the request."""
        return self._original is not None and self.request is not self._original

    def header(self) -> str:
        return self.decision.header()

    # --- the request ------------------------------------------------------------------

    def evaluate_request(self, request: ChatRequest) -> ChatRequest:
        """Check and rewrite ``request``; the result is also kept in ``self.request``.

        Raises:
            PolicyViolation: an enforced block or content rule fired.
            PolicyEvaluationFailed: evaluation raised and a policy in scope fails closed.
        """
        self.request = self._original = request
        if not self.active:
            return request
        self.evaluator.counters.requests += 1
        if not self.plan.checks_request:
            return request
        try:
            texts = _request_texts(request)
            joined = _SEPARATOR.join(texts)
            self.check_content(REQUEST, joined)
            if self._scan_request(texts, joined):
                self.request = self._rewrite_request(request)
        except PolicyViolation as exc:
            self._blocked(exc)
            raise
        except SmartflowError:
            raise
        except Exception as exc:  # noqa: BLE001 - any detector failure is handled the same
            self._evaluation_failed(REQUEST, exc)
            self._bypass_request = True
            self._memo.clear()
            self.request = request
        if self.request is not request:
            self.evaluator.counters.rewritten += 1
        return self.request

    def rewrite_request_text(self, text: str) -> str:
        """Return ``text`` after the request rules, as the canonical pass rewrote it.

        A body text that the canonical pass did not see is rewritten now, with the same
        vault, so one value gets one placeholder in the body and the canonical request.
        """
        if self._bypass_request or self.plan.detectors[REQUEST] is None:
            return text
        rewritten = self._memo.get(text)
        if rewritten is None:
            rewritten = self._guarded(lambda: self._rewrite_text(text), text, REQUEST)
        return rewritten

    def rewrite_request_arguments(self, arguments: str) -> str:
        """Rewrite the string values of a tool call's JSON arguments."""
        if self._bypass_request or self.plan.detectors[REQUEST] is None:
            return arguments
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return self.rewrite_request_text(arguments)
        rewritten = walk_strings(parsed, self.rewrite_request_text)
        return arguments if rewritten is parsed else orjson.dumps(rewritten).decode()

    def _rewrite_request(self, request: ChatRequest) -> ChatRequest:
        messages: list[Message] = []
        changed = False
        for message in request.messages:
            rewritten = self._rewrite_message(message)
            changed = changed or rewritten is not message
            messages.append(rewritten)
        return replace(request, messages=messages) if changed else request

    def _rewrite_message(self, message: Message) -> Message:
        changed = False
        content: list[Part] = []
        for part in message.content:
            if isinstance(part, TextPart):
                text = self.rewrite_request_text(part.text)
                if text != part.text:
                    part = TextPart(text)
                    changed = True
            content.append(part)
        calls: list[ToolCall] = []
        for call in message.tool_calls:
            arguments = self.rewrite_request_arguments(call.arguments)
            if arguments != call.arguments:
                call = replace(call, arguments=arguments)
                changed = True
            calls.append(call)
        return replace(message, content=content, tool_calls=calls) if changed else message

    def _scan_request(self, texts: list[str], joined: str) -> bool:
        """Detect in all request texts with one detector call, and fill the rewrite memo.

        Every occurrence of a text counts, but each distinct text is rewritten once. Returns
        whether anything was found.
        """
        detectors = self.plan.detectors[REQUEST]
        if detectors is None:
            return False
        recorded = self.plan.recorded[REQUEST]
        findings = [f for f in detectors.find(joined) if f.entity in recorded]
        if not findings:
            return False
        for text, found in zip(texts, split_findings(texts, findings), strict=True):
            for finding in found:
                self.decision.request_entities[finding.entity] += 1
                self._add_labels(finding.entity)
            if text not in self._memo:
                self._memo[text] = self._act(REQUEST, text, found, vault=self.vault)
        return True

    def _rewrite_text(self, text: str) -> str:
        plan = self.plan
        detectors = plan.detectors[REQUEST]
        if detectors is None or not text:
            self._memo[text] = text
            return text
        findings = [f for f in detectors.find(text) if f.entity in plan.recorded[REQUEST]]
        for finding in findings:
            self.decision.request_entities[finding.entity] += 1
            self._add_labels(finding.entity)
        rewritten = self._act(REQUEST, text, findings, vault=self.vault)
        self._memo[text] = rewritten
        return rewritten

    def _add_labels(self, entity: str) -> None:
        for label, document in self.plan.entity_labels.get(entity, ()):
            self.decision.labels.add(label.lower())
            if document.enforce:
                self._labels.add(label.lower())

    def _act(
        self,
        direction: str,
        text: str,
        findings: Sequence[Finding],
        *,
        vault: TokenVault | None = None,
    ) -> str:
        """Apply the enforced actions of ``direction`` to ``findings`` in ``text``."""
        if not findings:
            return text
        actions = self.plan.actions[direction]
        owners = self.plan.owners[direction]
        for finding in findings:
            if actions.get(finding.entity) is Action.BLOCK:
                raise EntityBlocked(owners[finding.entity], finding.entity)
        acted = [finding for finding in findings if finding.entity in actions]
        if not acted:
            return text
        for finding in acted:
            self.decision.actions[finding.entity] = actions[finding.entity].value
        return apply_actions(text, acted, actions, rule="", vault=vault).text

    def check_content(self, direction: str, text: str) -> None:
        """Run the content rules of ``direction`` over ``text``; raise if an enforced one fires.

        Raises:
            ContentBlocked: an enforced deny, regex or topic rule fired.
        """
        for document, rule_direction, rules in self.plan.content:
            if rule_direction != direction:
                continue
            for match in rules.check(text):
                hit = RuleHit(
                    document.name,
                    match.rule,
                    str(match.kind),
                    direction,
                    match.count,
                    document.enforce,
                )
                self.decision.record_rule(hit)
                if document.enforce:
                    raise ContentBlocked(document.name, match.rule, direction)

    # --- routing ----------------------------------------------------------------------

    def allowed_deployments(self, deployments: Sequence[Deployment]) -> list[Deployment]:
        """Return the deployments that the compliance rules of the request's labels allow.

        Raises:
            ResidencyRejected: no deployment is allowed; the message names label and policy.
        """
        applicable = [
            (rule, document)
            for rule, document in self.plan.compliance
            if rule.label.lower() in self._labels or rule.label.lower() in self.decision.labels
        ]
        if not applicable:
            return list(deployments)
        enforced = [
            (rule, document)
            for rule, document in applicable
            if document.enforce and rule.label.lower() in self._labels
        ]
        if any(not rule.store_bodies for rule, _ in enforced):
            self.decision.store_bodies = False
        allowed = [d for d in deployments if all(_permits(rule, d) for rule, _ in enforced)]
        names = [f"{rule.label}:{document.name}" for rule, document in applicable]
        self.decision.residency = ",".join(dict.fromkeys(names))
        if not allowed:
            rule, document = next(
                (pair for pair in enforced if not any(_permits(pair[0], d) for d in deployments)),
                enforced[0],
            )
            self.evaluator.counters.residency_rejected += 1
            raise ResidencyRejected(_residency_message(rule, document.name, deployments))
        return allowed

    # --- the response -----------------------------------------------------------------

    def rewrite_response_text(self, text: str, *, json_escaped: bool = False) -> str:
        """Apply the response rules to ``text``, then restore the request's placeholders.

        ``json_escaped``: ``text`` is the inside of a JSON string or JSON text (tool call
        arguments), so restored values are escaped for it.

        Raises:
            PolicyViolation: an enforced block or content rule fired.
            PolicyEvaluationFailed: evaluation raised and a policy in scope fails closed.
        """
        return self.rewrite_response_texts([(text, json_escaped)])[(text, json_escaped)]

    def rewrite_response_texts(
        self, slots: Sequence[tuple[str, bool]]
    ) -> dict[tuple[str, bool], str]:
        """Rewrite the texts of one whole response, as ``rewrite_response_text`` does each.

        The content rules see all texts together, and the detectors run once over them.
        Returns the new text for each ``(text, json_escaped)`` pair.
        """
        unique = list(dict.fromkeys(slots))
        texts = [text for text, _ in unique]
        joined = _SEPARATOR.join(texts)
        self._guarded(lambda: self.check_content(RESPONSE, joined), None)
        per_text: list[list[Finding]] = [[] for _ in texts]
        if self.plan.detectors[RESPONSE] is not None and joined:
            no_findings: list[Finding] = []
            findings = self._guarded(lambda: self._response_findings(joined), no_findings)
            per_text = split_findings(texts, findings)
        return {
            (text, escaped): self.restore(self.act_on_response(text, found), json_escaped=escaped)
            for (text, escaped), found in zip(unique, per_text, strict=True)
        }

    def restore(self, text: str, *, json_escaped: bool = False) -> str:
        """Replace the request's placeholders in ``text`` with their original values."""
        if not self.vault:
            return text
        return detokenize(text, _EscapedVault(self.vault) if json_escaped else self.vault)

    def open_channel(self, *, json_escaped: bool = False) -> TextChannel:
        """Start a rewriter for one streamed text (a choice's content, a tool's arguments)."""
        return TextChannel(self, json_escaped=json_escaped)

    def _response_findings(self, text: str) -> list[Finding]:
        detectors = self.plan.detectors[RESPONSE]
        if detectors is None:
            return []
        recorded = self.plan.recorded[RESPONSE]
        return [finding for finding in detectors.find(text) if finding.entity in recorded]

    def act_on_response(self, text: str, findings: Sequence[Finding]) -> str:
        """Count ``findings`` in response ``text`` and apply the enforced response actions."""
        for finding in findings:
            self.decision.response_entities[finding.entity] += 1
        try:
            return self._act(RESPONSE, text, findings)
        except PolicyViolation as exc:
            self._blocked(exc)
            raise

    def stream_detect(self, text: str) -> list[Finding]:
        """Detect for the stream window: content rules, then entity findings."""
        no_findings: list[Finding] = []
        return self._guarded(lambda: self._detect_response(text), no_findings)

    def _detect_response(self, text: str) -> list[Finding]:
        if self.plan.content:
            self.check_content(RESPONSE, text)
        return self._response_findings(text)

    def _guarded(self, call: Callable[[], T], fallback: T, direction: str = RESPONSE) -> T:
        """Return ``call()``, or ``fallback`` after an evaluation error if the policies fail
        open; else raise PolicyEvaluationFailed."""
        try:
            return call()
        except PolicyViolation as exc:
            self._blocked(exc)
            raise
        except SmartflowError:
            raise
        except Exception as exc:  # noqa: BLE001 - any detector failure is handled the same
            self._evaluation_failed(direction, exc)
            return fallback

    # --- failures ---------------------------------------------------------------------

    def _blocked(self, exc: PolicyViolation) -> None:
        if self.decision.blocked_by is None:
            self.evaluator.counters.blocked += 1
            if isinstance(exc, EntityBlocked):
                self.decision.blocked_by = f"{exc.rule}/{exc.entity}"
            else:
                self.decision.blocked_by = getattr(exc, "rule", None) or "policy"

    def _evaluation_failed(self, direction: str, exc: Exception) -> None:
        """Block (fail closed) or count and continue (fail open) after ``exc``."""
        counters = self.evaluator.counters
        names = ", ".join(self.plan.names)
        # Only the exception type is logged at error level: its message may quote the text.
        logger.debug("request %s: policy evaluation traceback", self.request_id, exc_info=exc)
        if self.plan.fail_closed:
            counters.errors_blocked += 1
            logger.error(
                "request %s: policy evaluation of the %s failed (%s); blocked because the "
                "policies in scope (%s) fail closed",
                self.request_id,
                direction,
                type(exc).__name__,
                names,
            )
            raise PolicyEvaluationFailed(
                f"The {direction} was blocked because policy evaluation failed "
                f"({type(exc).__name__}) and the policies in scope ({names}) fail closed. "
                "Retry later, or ask an administrator to check the gateway log."
            ) from exc
        counters.errors_let_through += 1
        self.decision.errors += 1
        logger.warning(
            "request %s: policy evaluation of the %s failed (%s); let through unchanged "
            "because the policies in scope (%s) fail open or only audit",
            self.request_id,
            direction,
            type(exc).__name__,
            names,
        )


class TextChannel:
    """One streamed text: the response rules over a hold-back window, then restoring."""

    def __init__(self, run: PolicyRun, *, json_escaped: bool) -> None:
        self._scanner: StreamScanner | None = None
        window = run.plan.window_chars
        if run.plan.checks_response:
            self._scanner = StreamScanner(window, run.stream_detect, run.act_on_response)
        # Text reaches the scanner in batches of a window: a detector call costs about the
        # same for 20 or 200 characters, so small deltas would each pay it in full. Up to two
        # windows of text are therefore held back.
        self._batch_chars = window
        self._unscanned = ""
        self._restorer: StreamDetokenizer | None = None
        if run.vault:
            vault: Mapping[str, str] = _EscapedVault(run.vault) if json_escaped else run.vault
            self._restorer = StreamDetokenizer(vault)

    def feed(self, text: str) -> str:
        """Return the part of the stream that is safe to send after adding ``text``."""
        if self._scanner is not None:
            self._unscanned += text
            if len(self._unscanned) < self._batch_chars:
                return ""
            text, self._unscanned = self._scanner.feed(self._unscanned), ""
        if self._restorer is not None:
            text = self._restorer.feed(text)
        return text

    def flush(self) -> str:
        """Return everything still held, at the end of the text."""
        text = ""
        if self._scanner is not None:
            text = self._scanner.feed(self._unscanned) + self._scanner.flush()
            self._unscanned = ""
        if self._restorer is not None:
            text = self._restorer.feed(text) + self._restorer.flush()
        return text


# Joins the texts of one request or response for a single detector call. No built-in
# detector matches across a blank line, except inside a PEM private key block.
_SEPARATOR = "\n\n"


def _request_texts(request: ChatRequest) -> list[str]:
    """Return every text of ``request`` that the rules read, in order.

    Tool call arguments count as the string values inside them, when they are JSON.
    """
    texts: list[str] = []
    for message in request.messages:
        for part in message.content:
            if isinstance(part, TextPart):
                texts.append(part.text)
        for call in message.tool_calls:
            try:
                arguments = orjson.loads(call.arguments)
            except orjson.JSONDecodeError:
                texts.append(call.arguments)
                continue
            walk_strings(arguments, lambda text: _collect(texts, text))
    return texts


def _collect(texts: list[str], text: str) -> str:
    texts.append(text)
    return text


def split_findings(texts: Sequence[str], findings: Sequence[Finding]) -> list[list[Finding]]:
    """Split findings in ``_SEPARATOR.join(texts)`` into per-text findings, in their offsets.

    NOTE: a finding that crosses a separator is cut at it, so each part is acted on alone.
    """
    starts: list[int] = []
    position = 0
    for text in texts:
        starts.append(position)
        position += len(text) + len(_SEPARATOR)
    result: list[list[Finding]] = [[] for _ in texts]
    for finding in findings:
        index = bisect.bisect_right(starts, finding.start) - 1
        while index < len(texts) and starts[index] < finding.end:
            text = texts[index]
            start = max(finding.start - starts[index], 0)
            end = min(finding.end - starts[index], len(text))
            if start < end:
                result[index].append(Finding(finding.entity, start, end, text[start:end]))
            index += 1
    return result


def _permits(rule: Any, deployment: Deployment) -> bool:
    provider = deployment.provider
    return (
        (not rule.allowed_sites or deployment.site in rule.allowed_sites)
        and (
            not rule.allowed_providers
            or provider.kind in rule.allowed_providers
            or provider.name in rule.allowed_providers
        )
        and (
            not rule.allowed_models
            or deployment.model in rule.allowed_models
            or deployment.public_model in rule.allowed_models
        )
    )


def _residency_message(rule: Any, policy: str, deployments: Sequence[Deployment]) -> str:
    limits = []
    if rule.allowed_sites:
        limits.append(f"sites {', '.join(rule.allowed_sites)}")
    if rule.allowed_providers:
        limits.append(f"providers {', '.join(rule.allowed_providers)}")
    if rule.allowed_models:
        limits.append(f"models {', '.join(rule.allowed_models)}")
    served = ", ".join(f"{d.label} at site {d.site}" for d in deployments) or "none"
    model = deployments[0].public_model if deployments else "the model"
    return (
        f"Rejected by compliance rule for label {rule.label!r} in policy {policy!r}: requests "
        f"labelled {rule.label!r} may go only to {' and '.join(limits) or 'no deployment'}, "
        f"and no deployment of {model!r} qualifies (configured: {served}). Use a model served "
        "at an allowed site, or ask an administrator to add such a deployment."
    )
