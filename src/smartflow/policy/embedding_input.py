"""Policy evaluation of embeddings input: each input text is checked as one user turn."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from smartflow.core.errors import InvalidRequest
from smartflow.core.types import ChatRequest, Message, TextPart
from smartflow.policy.actions import Action, TokenVault, detokenize
from smartflow.policy.engine import Evaluator, Plan, RequestContext
from smartflow.policy.run import PolicyRun

__all__ = ["EmbeddingPolicyResult", "evaluate_embedding_input"]

logger = logging.getLogger(__name__)

REQUEST = "request"
UNSCANNED_ITEM = "unscanned=token_arrays"
"""Appended to the policy header when token arrays passed policies that only audit."""


@dataclass(slots=True)
class EmbeddingPolicyResult:
    """The policy run of one embeddings request and its input texts after the rules."""

    run: PolicyRun
    texts: list[str]
    """The input texts to embed, in input order; empty for token-array input."""
    unscanned: bool = False
    """Whether token arrays passed audit-only request rules without being read."""

    def header(self) -> str:
        """Render the ``x-smartflow-policy`` header value."""
        header = self.run.header()
        return f"{header};{UNSCANNED_ITEM}" if self.unscanned else header


def evaluate_embedding_input(
    evaluator: Evaluator,
    context: RequestContext,
    texts: Sequence[str],
    *,
    token_arrays: bool = False,
    request_id: str = "",
) -> EmbeddingPolicyResult | None:
    """Run the request rules over embeddings input; None when no document is in scope.

    Redact and mask rewrite the texts as on chat. Tokenize acts as redact, because a
    vector response has no text in which to restore a placeholder. Token arrays cannot be
    read, so they are rejected when an enforced request rule would have to read them.

    Raises:
        PolicyViolation: an enforced block or content rule fired.
        PolicyEvaluationFailed: a detector raised and a policy in scope fails closed.
        InvalidRequest: the input is token arrays and an enforced request rule applies.
    """
    plan = evaluator.plan_for(context)
    if not plan.documents:
        return None
    if token_arrays:
        return _token_arrays(evaluator, plan, context, request_id)
    messages = [Message(role="user", content=[TextPart(text)]) for text in texts]
    request = ChatRequest(model=context.model, messages=messages)
    run = evaluator.evaluate_request(context, request, request_id=request_id)
    rewritten = run.request or request
    new_texts = [_text_of(message) for message in rewritten.messages]
    if run.vault:
        new_texts = _redact_placeholders(run, new_texts)
    return EmbeddingPolicyResult(run, new_texts)


def _text_of(message: Message) -> str:
    return "".join(part.text for part in message.content if isinstance(part, TextPart))


def _redact_placeholders(run: PolicyRun, texts: list[str]) -> list[str]:
    """Replace tokenize placeholders with redact labels and record the action as redact.

    The vault is emptied, so the original values are not kept past the request.
    """
    labels = {
        placeholder: f"[{placeholder[1 : placeholder.rindex('_')]}]" for placeholder in run.vault
    }
    result = [detokenize(text, labels) for text in texts]
    for entity, action in run.decision.actions.items():
        if action == Action.TOKENIZE.value:
            run.decision.actions[entity] = Action.REDACT.value
    run.vault = TokenVault()
    return result


def _token_arrays(
    evaluator: Evaluator, plan: Plan, context: RequestContext, request_id: str
) -> EmbeddingPolicyResult:
    enforcing = _enforced_request_rules(plan)
    if enforcing:
        raise InvalidRequest(
            "Token arrays in 'input' cannot be checked by the request rules of policy "
            f"{', '.join(enforcing)}, which apply to this request. Send the input as text.",
            param="input",
        )
    # An empty request counts the request and keeps the caller's labels for residency.
    run = evaluator.evaluate_request(
        context, ChatRequest(model=context.model, messages=[]), request_id=request_id
    )
    unscanned = plan.checks_request
    if unscanned:
        logger.info(
            "request %s: token-array input passed audit-only request rules unread", request_id
        )
    return EmbeddingPolicyResult(run, [], unscanned=unscanned)


def _enforced_request_rules(plan: Plan) -> list[str]:
    """Return the enforcing documents whose rules would read the request text.

    Entity actions, request content rules and entity-to-label mappings all read it. A
    label mapping counts because a missed label could send the input to an excluded site.
    """
    names: list[str] = []
    for document in plan.documents:
        if not document.enforce:
            continue
        reads = (
            bool(document.actions[REQUEST])
            or document.content[REQUEST] is not None
            or bool(document.entity_labels)
        )
        if reads:
            names.append(document.name)
    return names
