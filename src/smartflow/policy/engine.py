"""Compiling policy documents into an evaluator, and selecting the documents for a request.

``compile_policies`` builds every document's detectors and content rules once, so an
invalid document fails before it is committed. The evaluator merges the documents in scope
for a request context into a plan, cached per selection, and starts a ``PolicyRun`` for
each request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from smartflow.core.errors import ConfigError
from smartflow.core.types import ChatRequest
from smartflow.policy.actions import Action
from smartflow.policy.content import ContentRules, RegexRule, TopicRule, WordRule
from smartflow.policy.decision import PolicyCounters
from smartflow.policy.detectors import BUILTIN_ENTITIES, ENTITY_GROUPS, Detector, DetectorSet
from smartflow.policy.documents import (
    ComplianceRule,
    CustomPattern,
    CustomWordList,
    PolicyDocument,
    PolicyIssue,
    PolicySpec,
    PolicyValidationError,
)
from smartflow.policy.recognizers import RecognizerError, RecognizerOptions, build_recognizer
from smartflow.policy.run import PolicyRun

__all__ = [
    "Evaluator",
    "Plan",
    "RequestContext",
    "compile_policies",
]

logger = logging.getLogger(__name__)

REQUEST = "request"
RESPONSE = "response"
_DIRECTIONS = (REQUEST, RESPONSE)

# When two documents in scope set different actions for one entity type, the stricter wins.
# Redact and tokenize both hide the value from the provider; mask shows its last characters.
_STRICTNESS = {Action.BLOCK: 3, Action.REDACT: 2, Action.TOKENIZE: 1, Action.MASK: 0}
_MAX_CACHED_PLANS = 256
_MAX_CACHED_SCOPES = 4096


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The request fields that scope and compliance rules are matched against."""

    site: str
    team: str = ""
    key: str = ""
    """The virtual key's name."""
    model: str = ""
    """The public model name the caller asked for."""
    labels: frozenset[str] = frozenset()
    """Labels from the ``x-smartflow-classification`` header and the key, lower-cased."""


@dataclass(frozen=True, slots=True)
class _CompiledDocument:
    name: str
    enforce: bool
    fail_open: bool
    spec: PolicySpec
    actions: Mapping[str, Mapping[str, Action]]
    """Per direction: entity type to action."""
    patterns: Mapping[str, str]
    word_lists: Mapping[str, tuple[str, ...]]
    content: Mapping[str, ContentRules | None]
    entity_labels: Mapping[str, tuple[str, ...]]
    recognizers: Mapping[str, tuple[Detector, ...]]
    """Per direction: the detectors of the document's ``spec.recognizers`` that run there."""

    def matches(self, context: RequestContext) -> bool:
        scope = self.spec.scope
        return (
            (not scope.sites or context.site in scope.sites)
            and (not scope.teams or context.team in scope.teams)
            and (not scope.keys or context.key in scope.keys)
            and (not scope.models or context.model in scope.models)
        )


@dataclass(slots=True)
class _MergedActions:
    actions: dict[str, Action] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    recorded: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Plan:
    """The documents in scope for one kind of request, merged and compiled."""

    documents: tuple[_CompiledDocument, ...]
    detectors: Mapping[str, DetectorSet | None]
    """Per direction: the detectors for every entity type named there."""
    actions: Mapping[str, Mapping[str, Action]]
    """Per direction: the enforced action of each entity type (the strictest one)."""
    owners: Mapping[str, Mapping[str, str]]
    """Per direction: the document whose rule set each enforced action."""
    recorded: Mapping[str, frozenset[str]]
    """Per direction: entity types whose findings the decision counts."""
    content: tuple[tuple[_CompiledDocument, str, ContentRules], ...]
    entity_labels: Mapping[str, tuple[tuple[str, _CompiledDocument], ...]]
    compliance: tuple[tuple[ComplianceRule, _CompiledDocument], ...]
    window_chars: int
    fail_closed: bool
    """Whether an evaluation error blocks: true when an enforcing document fails closed."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(document.name for document in self.documents)

    @property
    def audit_names(self) -> tuple[str, ...]:
        return tuple(document.name for document in self.documents if not document.enforce)

    @property
    def checks_request(self) -> bool:
        """Whether any document in scope has a rule for the request."""
        return self.detectors[REQUEST] is not None or any(
            direction == REQUEST for _, direction, _ in self.content
        )

    @property
    def checks_response(self) -> bool:
        """Whether any document in scope has a rule for the response."""
        return self.detectors[RESPONSE] is not None or any(
            direction == RESPONSE for _, direction, _ in self.content
        )


class Evaluator:
    """A compiled policy version. Immutable, so the gateway can swap it between requests."""

    def __init__(
        self,
        documents: Sequence[PolicyDocument],
        compiled: Sequence[_CompiledDocument],
        *,
        extra_detectors: Sequence[Detector] = (),
        phone_regions: Sequence[str] = ("US",),
    ) -> None:
        self.documents = tuple(documents)
        self._compiled = tuple(compiled)
        self._extra_detectors = tuple(extra_detectors)
        self._phone_regions = tuple(phone_regions)
        self._plans: dict[tuple[int, ...], Plan] = {}
        """Plans by the indexes of the documents they merge."""
        self._plans_by_scope: dict[tuple[str, str, str, str], Plan] = {}
        """Plans by site, team, key and model, so most requests skip the scope matching."""
        self.counters = PolicyCounters()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(document.name for document in self.documents)

    def plan_for(self, context: RequestContext) -> Plan:
        """Return the merged plan of the documents whose scope matches ``context``."""
        scope_key = (context.site, context.team, context.key, context.model)
        plan = self._plans_by_scope.get(scope_key)
        if plan is not None:
            return plan
        key = tuple(i for i, document in enumerate(self._compiled) if document.matches(context))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_CACHED_PLANS:
                self._plans.clear()
            plan = self._build_plan([self._compiled[i] for i in key])
            self._plans[key] = plan
        if len(self._plans_by_scope) >= _MAX_CACHED_SCOPES:
            self._plans_by_scope.clear()
        self._plans_by_scope[scope_key] = plan
        return plan

    def evaluate_request(
        self, context: RequestContext, request: ChatRequest, *, request_id: str = ""
    ) -> PolicyRun:
        """Evaluate ``request`` and return the run: its rewritten request and its decision.

        Raises:
            PolicyViolation: an enforced block rule or content rule fired; it names the rule.
            PolicyEvaluationFailed: a detector raised and a policy in scope fails closed.
        """
        run = PolicyRun(self, self.plan_for(context), context, request_id)
        run.evaluate_request(request)
        return run

    def _build_plan(self, documents: list[_CompiledDocument]) -> Plan:
        merged = {direction: _MergedActions() for direction in _DIRECTIONS}
        entity_labels: dict[str, list[tuple[str, _CompiledDocument]]] = {}
        for document in documents:
            for direction in _DIRECTIONS:
                _merge_actions(merged[direction], document, direction)
            for entity, labels in document.entity_labels.items():
                entity_labels.setdefault(entity, []).extend((label, document) for label in labels)
        merged[REQUEST].recorded |= set(entity_labels)

        detectors = {
            direction: self._detectors(documents, merged[direction].recorded, direction)
            for direction in _DIRECTIONS
        }
        content = tuple(
            (document, direction, rules)
            for document in documents
            for direction in _DIRECTIONS
            if (rules := document.content[direction]) is not None
        )
        compliance = tuple(
            (rule, document) for document in documents for rule in document.spec.compliance.rules
        )

        return Plan(
            documents=tuple(documents),
            detectors=detectors,
            actions={d: dict(merged[d].actions) for d in _DIRECTIONS},
            owners={d: dict(merged[d].owners) for d in _DIRECTIONS},
            recorded={d: frozenset(merged[d].recorded) for d in _DIRECTIONS},
            content=content,
            entity_labels={entity: tuple(pairs) for entity, pairs in entity_labels.items()},
            compliance=compliance,
            window_chars=max((d.spec.stream.window_chars for d in documents), default=64),
            fail_closed=any(d.enforce and not d.fail_open for d in documents),
        )

    def _detectors(
        self, documents: Sequence[_CompiledDocument], entities: set[str], direction: str
    ) -> DetectorSet | None:
        if not entities:
            return None
        patterns: dict[str, str] = {}
        word_lists: dict[str, tuple[str, ...]] = {}
        # Keyed by identity: documents with an equal recogniser entry share one detector.
        recognizers: dict[int, Detector] = {}
        for document in documents:
            patterns.update((e, p) for e, p in document.patterns.items() if e in entities)
            word_lists.update((e, w) for e, w in document.word_lists.items() if e in entities)
            recognizers.update((id(d), d) for d in document.recognizers[direction])
        return DetectorSet.build(
            [e for e in entities if e in BUILTIN_ENTITIES],
            patterns,
            word_lists,
            phone_regions=self._phone_regions,
            extra_detectors=[*recognizers.values(), *self._extra_detectors],
        )


def _merge_actions(merged: _MergedActions, document: _CompiledDocument, direction: str) -> None:
    for entity, action in document.actions[direction].items():
        merged.recorded.add(entity)
        if not document.enforce:
            continue
        current = merged.actions.get(entity)
        if current is None or _STRICTNESS[action] > _STRICTNESS[current]:
            merged.actions[entity] = action
            merged.owners[entity] = document.name


# --- compiling ----------------------------------------------------------------------


def compile_policies(
    documents: Sequence[PolicyDocument],
    *,
    extra_detectors: Sequence[Detector] = (),
    phone_regions: Sequence[str] = ("US",),
) -> Evaluator:
    """Compile ``documents`` into an evaluator, building each document's rules once.

    ``extra_detectors`` run in every detector set, after the built-in ones; their entity
    types are counted only where a rule names them.

    Raises:
        PolicyValidationError: a document's detectors or content rules do not compile, or
            two documents define one custom entity type differently. It lists every issue.
    """
    compiled: list[_CompiledDocument] = []
    issues: list[PolicyIssue] = []
    custom_owners: dict[str, tuple[str, str]] = {}
    recognizers: dict[tuple[str, RecognizerOptions], Detector] = {}
    for document in documents:
        try:
            item = _compile_document(document, phone_regions, recognizers)
        except ConfigError as exc:
            path = f"spec.{exc.param}" if exc.param else "spec"
            issues.append(PolicyIssue(document=document.name, path=path, message=exc.message))
            continue
        issues.extend(_custom_conflicts(item, custom_owners))
        compiled.append(item)
    if issues:
        raise PolicyValidationError(issues)
    logger.info(
        "compiled %d policy documents: %s",
        len(compiled),
        ", ".join(document.name for document in compiled) or "none",
    )
    return Evaluator(
        documents, compiled, extra_detectors=extra_detectors, phone_regions=phone_regions
    )


def _custom_conflicts(
    item: _CompiledDocument, owners: dict[str, tuple[str, str]]
) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []
    definitions = {e: f"regex {p}" for e, p in item.patterns.items()}
    definitions.update({e: f"words {sorted(w)}" for e, w in item.word_lists.items()})
    for entity, definition in definitions.items():
        owner = owners.setdefault(entity, (item.name, definition))
        if owner[1] != definition:
            message = (
                f"custom entity {entity} is defined differently in document {owner[0]!r}; "
                "give one of them another name"
            )
            issues.append(PolicyIssue(document=item.name, path="spec.custom", message=message))
    return issues


def _compile_document(
    document: PolicyDocument,
    phone_regions: Sequence[str],
    recognizers: dict[tuple[str, RecognizerOptions], Detector],
) -> _CompiledDocument:
    spec = document.spec
    actions: dict[str, dict[str, Action]] = {direction: {} for direction in _DIRECTIONS}
    for rule in spec.entities:
        entities = ENTITY_GROUPS.get(rule.type, frozenset({rule.type}))
        for direction in _rule_directions(rule.on, rule.action):
            for entity in entities:
                _set_stricter(actions[direction], entity, Action(rule.action))
    patterns = {pattern.name.upper(): pattern.regex for pattern in spec.custom.patterns}
    word_lists = {
        word_list.name.upper(): tuple(word_list.words) for word_list in spec.custom.word_lists
    }
    customs: list[CustomPattern | CustomWordList] = [*spec.custom.patterns]
    customs.extend(spec.custom.word_lists)
    for custom in customs:
        for direction in _rule_directions(custom.on, custom.action):
            actions[direction][custom.name.upper()] = Action(custom.action)
    for recognizer in spec.recognizers:
        for direction in _rule_directions(recognizer.on, recognizer.action):
            for entity in recognizer.entities:
                _set_stricter(actions[direction], entity, Action(recognizer.action))

    entity_labels: dict[str, tuple[str, ...]] = {}
    for mapping in spec.compliance.labels_from_entities:
        entity_labels[mapping.entity] = (*entity_labels.get(mapping.entity, ()), mapping.label)

    # Build once here so that an invalid pattern fails at compile time, not per request.
    all_entities = {e for direction in actions.values() for e in direction} | set(entity_labels)
    builtin = [e for e in all_entities if e in BUILTIN_ENTITIES]
    DetectorSet.build(builtin, patterns, word_lists, phone_regions=phone_regions)
    content = {direction: _content_rules(spec, direction) for direction in _DIRECTIONS}
    return _CompiledDocument(
        name=document.name,
        enforce=spec.mode == "enforce",
        fail_open=spec.failure == "open",
        spec=spec,
        actions=actions,
        patterns=patterns,
        word_lists=word_lists,
        content=content,
        entity_labels=entity_labels,
        recognizers=_build_recognizers(spec, set(entity_labels), recognizers),
    )


def _build_recognizers(
    spec: PolicySpec,
    labelled: set[str],
    built: dict[tuple[str, RecognizerOptions], Detector],
) -> dict[str, tuple[Detector, ...]]:
    """Build the detectors of ``spec.recognizers`` and sort them by the directions they run in.

    A recogniser also runs on the request when a compliance label maps one of its entity
    types. ``built`` shares the detectors of equal entries across the documents of a set.

    Raises:
        ConfigError: a recogniser is unknown, not installed, or rejects its settings; the
            ``param`` is the path of the field to fix, below ``spec``.
    """
    by_direction: dict[str, list[Detector]] = {direction: [] for direction in _DIRECTIONS}
    for index, rule in enumerate(spec.recognizers):
        options = RecognizerOptions(
            entities=frozenset(rule.entities),
            min_score=rule.min_score,
            language=rule.language,
            model=rule.model,
        )
        detector = built.get((rule.name, options))
        if detector is None:
            try:
                detector = build_recognizer(rule.name, options)
            except RecognizerError as exc:
                field_name = exc.param or "name"
                raise ConfigError(exc.message, param=f"recognizers[{index}].{field_name}") from exc
            built[(rule.name, options)] = detector
        directions = set(_rule_directions(rule.on, rule.action))
        if labelled.intersection(rule.entities):
            directions.add(REQUEST)
        for direction in _DIRECTIONS:
            if direction in directions:
                by_direction[direction].append(detector)
    return {direction: tuple(detectors) for direction, detectors in by_direction.items()}


def _rule_directions(directions: Sequence[str], action: str) -> list[str]:
    """Return the directions in which a rule acts.

    Tokenize acts on the request only. On the response, the request's placeholders are
    restored whatever the rules set, and a value that the model produced itself would come
    back unchanged from its placeholder, so no response detection is needed for it.
    """
    if action == Action.TOKENIZE:
        return [direction for direction in directions if direction == REQUEST]
    return list(directions)


def _set_stricter(actions: dict[str, Action], entity: str, action: Action) -> None:
    current = actions.get(entity)
    if current is None or _STRICTNESS[action] > _STRICTNESS[current]:
        actions[entity] = action


def _content_rules(spec: PolicySpec, direction: str) -> ContentRules | None:
    content = spec.content
    deny = [
        WordRule(rule.name, tuple(rule.words), rule.whole_word, rule.case_sensitive)
        for rule in content.deny
        if direction in rule.on
    ]
    regex = [
        RegexRule(rule.name, rule.pattern, rule.ignore_case)
        for rule in content.regex
        if direction in rule.on
    ]
    topics = [
        TopicRule(rule.name, tuple(rule.keywords), rule.threshold, rule.whole_word)
        for rule in content.topics
        if direction in rule.on
    ]
    if not (deny or regex or topics):
        return None
    allow = [
        WordRule(rule.name, tuple(rule.words), rule.whole_word, rule.case_sensitive)
        for rule in content.allow
        if direction in rule.on
    ]
    return ContentRules.build(deny=deny, allow=allow, regex=regex, topics=topics)
