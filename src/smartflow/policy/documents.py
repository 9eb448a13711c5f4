"""Policy documents (``apiVersion: smartflow/v1``, ``kind: Policy``): schema and YAML parsing.

A document is data only. ``smartflow.policy.engine.compile_policies`` turns a list of them
into an evaluator. Every list in ``spec.scope`` that is empty matches everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smartflow.core.errors import SmartflowError
from smartflow.policy.detectors import BUILTIN_ENTITIES, ENTITY_GROUPS
from smartflow.policy.patterns import compile_policy_regex

__all__ = [
    "API_VERSION",
    "KIND",
    "ComplianceRule",
    "ComplianceSpec",
    "ContentSpec",
    "CustomPattern",
    "CustomSpec",
    "CustomWordList",
    "EntityLabel",
    "EntityRule",
    "PolicyDocument",
    "PolicyIssue",
    "PolicySpec",
    "PolicyValidationError",
    "RecognizerRule",
    "RegexContentRule",
    "ScopeSpec",
    "StreamSpec",
    "TopicContentRule",
    "WordContentRule",
    "custom_entity_names",
    "dump_documents",
    "load_yaml",
    "parse_documents",
    "recognizer_entity_names",
    "validate_documents",
]

API_VERSION = "smartflow/v1"
KIND = "Policy"

ActionName = Literal["redact", "mask", "tokenize", "block"]
Direction = Literal["request", "response"]

# Names show up in the x-smartflow-policy header and in logs, so they stay header-safe.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_NAME_RULE = "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit"
# Custom pattern and word-list names become entity names (``ticket`` reports TICKET).
_ENTITY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# A recogniser's model is named as an installed package (such as a spaCy pipeline), never as a
# file path, so a policy cannot make the gateway load files from arbitrary places.
_MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")


class PolicyIssue(BaseModel):
    """One problem in one document: which document, where in it, and what is allowed."""

    model_config = ConfigDict(frozen=True)

    document: str
    """``metadata.name`` when it could be read, else ``document[<index>]`` (from 0)."""
    path: str
    """A path such as ``spec.entities[2].action``; empty for the document as a whole."""
    message: str

    def __str__(self) -> str:
        where = f"{self.document}: {self.path}" if self.path else self.document
        return f"{where}: {self.message}"


class PolicyValidationError(SmartflowError):
    """A policy document that is not valid; ``issues`` lists every problem found.

    ``document``, ``path`` and ``message`` repeat the first issue for callers that show one.
    """

    status = 422
    code = "invalid_policy"
    log_level = 20  # logging.INFO: the author's mistake, not the gateway's

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        if not issues:
            raise ValueError("PolicyValidationError needs at least one issue")
        self.issues: tuple[PolicyIssue, ...] = tuple(issues)
        first = self.issues[0]
        self.document = first.document
        self.path = first.path
        lines = [str(issue) for issue in self.issues]
        text = "invalid policy: " + lines[0]
        if len(lines) > 1:
            text = "invalid policy:\n  " + "\n  ".join(lines)
        super().__init__(text, param=first.path or None)
        # ``message`` stays the first issue's own text, for callers that show one line.
        self.message = first.message
        self.args = (text,)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _require_unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} is listed twice; list each once")
        seen.add(name)


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"invalid name {value!r}: use {_NAME_RULE}")
    return value


def _directions_key(data: Any) -> Any:
    """Accept ``on`` read as the YAML 1.1 boolean ``true`` by a plain ``yaml.safe_load``."""
    if isinstance(data, dict) and True in data and "on" not in data:
        data = {("on" if key is True else key): value for key, value in data.items()}
    return data


class _Directed(_Strict):
    on: list[Direction] = ["request", "response"]
    """The directions the rule applies to: request, response, or both (the default).

    A tokenize rule acts on the request only: its placeholders are restored in the response.
    """

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        return _directions_key(data)

    @field_validator("on")
    @classmethod
    def _not_empty(cls, value: list[Direction]) -> list[Direction]:
        if not value:
            raise ValueError("list 'request', 'response' or both")
        return value


class Metadata(_Strict):
    name: str
    description: str = ""

    _name = field_validator("name")(_check_name)


class ScopeSpec(_Strict):
    """The requests a document applies to. An empty list matches every value."""

    sites: list[str] = []
    teams: list[str] = []
    keys: list[str] = []
    """Virtual key names, as in ``keys[].name`` of the gateway configuration."""
    models: list[str] = []
    """Public model names, as the caller sends them."""


class EntityRule(_Directed):
    """The action for one built-in entity type, or for a group: pii, secrets or all."""

    type: str
    action: ActionName

    @field_validator("type")
    @classmethod
    def _known_entity(cls, value: str) -> str:
        if value.lower() in ENTITY_GROUPS:
            return value.lower()
        if value.upper() in BUILTIN_ENTITIES:
            return value.upper()
        known = ", ".join(sorted(BUILTIN_ENTITIES)) + "; or a group: " + ", ".join(ENTITY_GROUPS)
        raise ValueError(f"unknown entity type {value!r}; expected one of {known}")


def _check_entity_name(value: str) -> str:
    if not _ENTITY_NAME.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use a letter followed by up to 63 letters, digits or '_' "
            "(the name is reported as an upper-case entity type)"
        )
    if value.upper() in BUILTIN_ENTITIES:
        raise ValueError(f"name {value!r} is a built-in entity type; choose another name")
    return value


class CustomPattern(_Directed):
    """A regular expression reported as the entity ``name.upper()``.

    A named group ``value`` limits the finding to that group.
    """

    name: str
    regex: str
    action: ActionName

    _name = field_validator("name")(_check_entity_name)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_policy_regex(value)  # raises PolicyRegexError, a ValueError, with the reason
        return value


class CustomWordList(_Directed):
    """Words matched case-insensitively as whole words, reported as ``name.upper()``."""

    name: str
    words: list[str] = Field(min_length=1)
    action: ActionName

    _name = field_validator("name")(_check_entity_name)


class CustomSpec(_Strict):
    patterns: list[CustomPattern] = []
    word_lists: list[CustomWordList] = []

    @model_validator(mode="after")
    def _unique_names(self) -> CustomSpec:
        names = [pattern.name.upper() for pattern in self.patterns]
        names += [word_list.name.upper() for word_list in self.word_lists]
        _require_unique(names, "custom entity name")
        return self


class RecognizerRule(_Directed):
    """An optional deeper recogniser, such as ``presidio``, switched on for this document.

    Its package and model must be installed on the gateway host: a document that names a
    recogniser that is not installed fails to compile, so it never becomes active.
    """

    name: str
    """The registered recogniser, for example ``presidio`` (Presidio with a spaCy model)."""
    entities: list[str] = Field(min_length=1)
    """Entity types to report, as the recogniser names them (``PERSON``, ``LOCATION``)."""
    action: ActionName
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    """Findings with a lower confidence score (0 to 1) are dropped."""
    language: str = "en"
    """The language code of the texts, as the recogniser names it."""
    model: str = ""
    """The installed model package to load, such as ``en_core_web_lg`` for presidio; empty
    means the recogniser's default. The gateway never downloads a model."""

    _name = field_validator("name")(_check_name)

    @field_validator("entities")
    @classmethod
    def _entity_names(cls, value: list[str]) -> list[str]:
        names = []
        for name in value:
            if not _ENTITY_NAME.fullmatch(name):
                raise ValueError(
                    f"invalid entity type {name!r}: use a letter followed by up to 63 letters, "
                    "digits or '_'"
                )
            names.append(name.upper())
        _require_unique(names, "entity type")
        return names

    @field_validator("language")
    @classmethod
    def _language_code(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?", value):
            raise ValueError(f"invalid language code {value!r}: use a code such as 'en' or 'de'")
        return value

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if value and not _MODEL_NAME.fullmatch(value):
            raise ValueError(
                f"invalid model name {value!r}: name an installed model package (letters, "
                "digits, '_', '.' or '-', starting with a letter), not a path"
            )
        return value


class WordContentRule(_Directed):
    """A deny or allow list. A deny match blocks; an allow match exempts what lies inside it."""

    name: str
    words: list[str] = Field(min_length=1)
    whole_word: bool = True
    case_sensitive: bool = False

    _name = field_validator("name")(_check_name)


class RegexContentRule(_Directed):
    """A regular expression that blocks the text wherever it matches."""

    name: str
    pattern: str
    ignore_case: bool = True

    _name = field_validator("name")(_check_name)
    _compiles = field_validator("pattern")(CustomPattern._compiles.__func__)  # type: ignore[attr-defined]


class TopicContentRule(_Directed):
    """A topic that blocks the text when ``threshold`` distinct keywords occur in it."""

    name: str
    keywords: list[str] = Field(min_length=1)
    threshold: int = Field(2, ge=1)
    whole_word: bool = True

    _name = field_validator("name")(_check_name)


class ContentSpec(_Strict):
    deny: list[WordContentRule] = []
    allow: list[WordContentRule] = []
    regex: list[RegexContentRule] = []
    topics: list[TopicContentRule] = []

    @model_validator(mode="after")
    def _unique_names(self) -> ContentSpec:
        names = [rule.name for rule in self.deny]
        names += [rule.name for rule in self.regex]
        names += [rule.name for rule in self.topics]
        _require_unique(names, "content rule name")
        _require_unique([rule.name for rule in self.allow], "allow rule name")
        return self


class EntityLabel(_Strict):
    """Give a request ``label`` when its text contains ``entity`` (built-in or custom)."""

    entity: str
    label: str

    @field_validator("entity")
    @classmethod
    def _entity_name(cls, value: str) -> str:
        if not _ENTITY_NAME.fullmatch(value):
            raise ValueError(f"invalid entity type {value!r}")
        return value.upper()

    _label = field_validator("label")(_check_name)


class ComplianceRule(_Strict):
    """The deployments that a request with ``label`` may go to.

    An empty list leaves that dimension open.
    """

    label: str
    allowed_sites: list[str] = []
    allowed_providers: list[str] = []
    """Provider kinds (openai, azure_openai, anthropic, bedrock, gemini, vertex_gemini,
    cohere) or configured provider names."""
    allowed_models: list[str] = []
    """Provider-side model names (``models.<name>[].model``) or public model names."""
    store_bodies: bool = True
    """False: request and response bodies of such a request must not be stored."""

    _label = field_validator("label")(_check_name)


class ComplianceSpec(_Strict):
    labels_from_entities: list[EntityLabel] = []
    rules: list[ComplianceRule] = []


class StreamSpec(_Strict):
    window_chars: int = Field(64, ge=8, le=4096)
    """Characters of a streamed response held back so a value split across chunks is
    still found. It must be at least the longest value plus its context."""


class PolicySpec(_Strict):
    mode: Literal["enforce", "audit"] = "enforce"
    """audit: decisions are recorded and reported, nothing is blocked or rewritten."""
    failure: Literal["closed", "open"] = "closed"
    """open: a detector error lets the request through unchanged (logged and counted)."""
    scope: ScopeSpec = ScopeSpec()
    entities: list[EntityRule] = []
    custom: CustomSpec = CustomSpec()
    recognizers: list[RecognizerRule] = []
    """Optional deeper recognisers; none by default, so the default path loads no model."""
    content: ContentSpec = ContentSpec()
    compliance: ComplianceSpec = ComplianceSpec()
    stream: StreamSpec = StreamSpec()

    @field_validator("entities")
    @classmethod
    def _unique_entities(cls, value: list[EntityRule]) -> list[EntityRule]:
        _require_unique([rule.type for rule in value], "entity type")
        return value

    @field_validator("recognizers")
    @classmethod
    def _unique_recognizer_entities(cls, value: list[RecognizerRule]) -> list[RecognizerRule]:
        names = [entity for rule in value for entity in rule.entities]
        _require_unique(names, "recognizer entity type")
        return value


class PolicyDocument(_Strict):
    api_version: Literal["smartflow/v1"] = Field(alias="apiVersion")
    kind: Literal["Policy"]
    metadata: Metadata
    spec: PolicySpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_dict(self) -> dict[str, Any]:
        """Return the document as plain data under its YAML field names."""
        return self.model_dump(mode="json", by_alias=True)


class _PolicyLoader(yaml.SafeLoader):
    """A safe loader that reads only true/false as booleans, so ``on:`` stays a string."""


_PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(yaml_text: str) -> list[Any]:
    """Read every YAML document in ``yaml_text``; a top-level list counts as its items.

    Raises:
        PolicyValidationError: the text is not valid YAML.
    """
    try:
        loaded = list(yaml.load_all(yaml_text, Loader=_PolicyLoader))
    except yaml.YAMLError as exc:
        raise PolicyValidationError(
            [PolicyIssue(document="(yaml)", path="", message=f"invalid YAML: {exc}")]
        ) from exc
    items: list[Any] = []
    for data in loaded:
        if data is None:
            continue
        items.extend(data if isinstance(data, list) else [data])
    return items


def parse_documents(yaml_text: str) -> list[PolicyDocument]:
    """Parse and validate the policy documents in ``yaml_text`` (``---`` separated).

    Raises:
        PolicyValidationError: invalid YAML, an invalid document, or two documents with
            the same ``metadata.name``; it lists every issue found.
    """
    return validate_documents(load_yaml(yaml_text))


def validate_documents(items: Sequence[Any]) -> list[PolicyDocument]:
    """Validate already-loaded documents (for example from a JSON request body).

    Raises:
        PolicyValidationError: as ``parse_documents``.
    """
    documents: list[PolicyDocument] = []
    issues: list[PolicyIssue] = []
    seen: dict[str, int] = {}
    for index, data in enumerate(items):
        label = _document_label(data, index)
        if not isinstance(data, dict):
            message = "a policy document must be a mapping with apiVersion, kind, metadata, spec"
            issues.append(PolicyIssue(document=label, path="", message=message))
            continue
        try:
            document = PolicyDocument.model_validate(data)
        except ValidationError as exc:
            issues.extend(_issues(exc, label))
            continue
        semantic = _semantic_issues(document, label)
        if semantic:
            issues.extend(semantic)
            continue
        if document.name in seen:
            message = f"another document (index {seen[document.name]}) has the same name"
            issues.append(PolicyIssue(document=label, path="metadata.name", message=message))
            continue
        seen[document.name] = index
        documents.append(document)
    if issues:
        raise PolicyValidationError(issues)
    return documents


def _semantic_issues(document: PolicyDocument, label: str) -> list[PolicyIssue]:
    """Check what one field cannot check alone: label mappings name a known entity type, and
    recognisers do not report a custom entity type."""
    custom = custom_entity_names(document.spec)
    recognized = recognizer_entity_names(document.spec)
    issues = []
    for index, rule in enumerate(document.spec.recognizers):
        for position, entity in enumerate(rule.entities):
            if entity in custom:
                issues.append(
                    PolicyIssue(
                        document=label,
                        path=f"spec.recognizers[{index}].entities[{position}]",
                        message=f"entity type {entity!r} is also a custom entity; rename one",
                    )
                )
    known = BUILTIN_ENTITIES | custom | recognized
    for index, mapping in enumerate(document.spec.compliance.labels_from_entities):
        if mapping.entity not in known:
            issues.append(
                PolicyIssue(
                    document=label,
                    path=f"spec.compliance.labels_from_entities[{index}].entity",
                    message=(
                        f"unknown entity type {mapping.entity!r}; expected one of "
                        f"{', '.join(sorted(known))}"
                    ),
                )
            )
    return issues


def custom_entity_names(spec: PolicySpec) -> set[str]:
    """Return the entity types that the custom patterns and word lists of ``spec`` report."""
    names = {pattern.name.upper() for pattern in spec.custom.patterns}
    return names | {word_list.name.upper() for word_list in spec.custom.word_lists}


def recognizer_entity_names(spec: PolicySpec) -> set[str]:
    """Return the entity types that the recognisers of ``spec`` report."""
    return {entity for rule in spec.recognizers for entity in rule.entities}


def dump_documents(documents: Iterable[PolicyDocument]) -> str:
    """Render documents as multi-document YAML that ``parse_documents`` reads back."""
    return yaml.safe_dump_all(
        [document.to_dict() for document in documents], sort_keys=False, allow_unicode=True
    )


def _document_label(data: Any, index: int) -> str:
    if isinstance(data, dict):
        metadata = data.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
            name: str = metadata["name"][:63]
            return name
    return f"document[{index}]"


def _format_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _issues(exc: ValidationError, label: str) -> list[PolicyIssue]:
    issues: list[PolicyIssue] = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if not _is_validator_tag(part)]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = _unknown_field_message(loc)
        elif error["type"] == "missing":
            message = "required field is missing"
        issues.append(PolicyIssue(document=label, path=_format_path(loc), message=message))
    return issues


def _is_validator_tag(part: int | str) -> bool:
    # Pydantic adds a tag such as "function-after[...]" to the loc of some validator errors.
    return isinstance(part, str) and "[" in part


def _unknown_field_message(loc: Sequence[int | str]) -> str:
    model: type[BaseModel] | None = PolicyDocument
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            field = next(
                (f for f in model.model_fields.values() if f.alias == part),
                None,
            )
        model = _model_of(field.annotation) if field is not None else None
    if model is None:
        return "unknown field"
    allowed = ", ".join(f.alias or n for n, f in model.model_fields.items())
    return f"unknown field; allowed here: {allowed}"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_of(argument)
        if found is not None:
            return found
    return None
