"""Request validation for the Gemini simulator: models, errors and ``generateContent`` bodies.

The real API parses request bodies as protocol-buffer JSON, so it accepts every field in
camelCase and in snake_case, rejects unknown field names and wrong value types with
``INVALID_ARGUMENT``, and names the offending field path in the message. The messages here
follow the shapes seen in real responses; their exact wording is approximate.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from smartflow.sim.script import SimInput

__all__ = [
    "GeminiModel",
    "GoogleError",
    "ParsedRequest",
    "gemini_model",
    "google_error_body",
    "parse_generate_request",
    "prompt_token_details",
]

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_HARM_CATEGORIES = frozenset(
    "HARM_CATEGORY_UNSPECIFIED HARM_CATEGORY_HARASSMENT HARM_CATEGORY_HATE_SPEECH "
    "HARM_CATEGORY_SEXUALLY_EXPLICIT HARM_CATEGORY_DANGEROUS_CONTENT "
    "HARM_CATEGORY_CIVIC_INTEGRITY".split()
)
_THRESHOLDS = frozenset(
    "HARM_BLOCK_THRESHOLD_UNSPECIFIED BLOCK_LOW_AND_ABOVE BLOCK_MEDIUM_AND_ABOVE "
    "BLOCK_ONLY_HIGH BLOCK_NONE OFF".split()
)
_REQUEST_FIELDS = frozenset(
    "model contents systemInstruction tools toolConfig safetySettings generationConfig "
    "cachedContent labels serviceTier store".split()
)
_GENERATION_FIELDS = frozenset(
    "temperature topP topK candidateCount maxOutputTokens stopSequences responseMimeType "
    "responseSchema responseJsonSchema responseModalities responseLogprobs logprobs "
    "presencePenalty frequencyPenalty seed thinkingConfig mediaResolution speechConfig "
    "imageConfig enableEnhancedCivicAnswers audioTimestamp".split()
)
_PART_DATA = tuple(
    "text inlineData fileData functionCall functionResponse executableCode "
    "codeExecutionResult".split()
)
_PART_FIELDS = frozenset(
    {*_PART_DATA, "thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}
)
_TOOL_FIELDS = frozenset(
    "functionDeclarations googleSearch googleSearchRetrieval codeExecution urlContext "
    "retrieval computerUse fileSearch googleMaps".split()
)
_DECLARATION_FIELDS = frozenset(
    "name description parameters parametersJsonSchema response responseJsonSchema behavior".split()
)
_CALL_FIELDS = frozenset("id name args partialArgs willContinue".split())
_RESULT_FIELDS = frozenset("id name response parts willContinue scheduling".split())
_BLOB_FIELDS = frozenset("mimeType data fileUri displayName".split())
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,63}$")
_MIME_TYPES = ("text/plain", "application/json", "text/x.enum")
_SKIP_SIGNATURES = frozenset(
    {"context_engineering_is_the_way_to_go", "skip_thought_signature_validator"}
)
_SIGNATURE_PREFIX = b"smartflow-sim-thought-signature:"


class GoogleError(Exception):
    """An error returned in Google's ``{"error": {code, message, status, details}}`` shape."""

    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def google_error_body(error: GoogleError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": error.status,
        "message": error.message,
        "status": STATUS_NAMES.get(error.status, "UNKNOWN"),
    }
    if error.details:
        body["details"] = error.details
    return {"error": body}


def _bad_request(path: str, message: str) -> GoogleError:
    violation = {"field": path, "description": message}
    detail = {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}
    return GoogleError(400, message, [detail])


def _field_error(path: str, message: str) -> GoogleError:
    return _bad_request(path, f"* GenerateContentRequest.{path}: {message}\n")


@dataclass(frozen=True, slots=True)
class GeminiModel:
    """One served model and the limits the simulator enforces for it."""

    name: str
    output_token_limit: int = 65_536
    input_token_limit: int = 1_048_576
    thinking: str = "none"
    """``none``, ``budget`` (Gemini 2.5 ``thinkingBudget``) or ``level`` (Gemini 3)."""
    budget_range: tuple[int, int] = (0, 24_576)
    can_disable_thinking: bool = True
    thinks_by_default: bool = True
    levels: tuple[str, ...] = ()
    signatures: bool = False
    """Whether function calls carry thought signatures that must be sent back."""
    embedding_dimensions: int | None = None

    def thinks(self, budget: int | None, level: str | None) -> bool:
        if self.thinking == "none":
            return False
        if budget is not None:
            return budget != 0
        return self.thinks_by_default or level is not None

    def describe(self) -> dict[str, Any]:
        if self.embedding_dimensions is not None:
            methods = ["embedContent", "batchEmbedContents", "countTokens"]
        else:
            methods = ["generateContent", "streamGenerateContent", "countTokens"]
        body: dict[str, Any] = {
            "name": f"models/{self.name}",
            "version": "001",
            "displayName": self.name.replace("-", " ").title(),
            "description": f"Simulated {self.name}.",
            "inputTokenLimit": self.input_token_limit,
            "outputTokenLimit": self.output_token_limit,
            "supportedGenerationMethods": methods,
        }
        if self.embedding_dimensions is None:
            body |= {"temperature": 1.0, "topP": 0.95, "topK": 64, "maxTemperature": 2.0}
            body["thinking"] = self.thinking != "none"
        return body


def gemini_model(name: str) -> GeminiModel:
    """Build the traits of a model from its name, following the public model families."""
    if "embedding" in name:
        dimensions = 3072 if name.startswith("gemini-embedding") else 768
        return GeminiModel(
            name, output_token_limit=1, input_token_limit=2048, embedding_dimensions=dimensions
        )
    if name.startswith("gemini-3"):
        levels = ("low", "high") if "pro" in name else ("minimal", "low", "medium", "high")
        return GeminiModel(
            name, thinking="level", levels=levels, can_disable_thinking=False, signatures=True
        )
    if name.startswith("gemini-2.5-pro"):
        return GeminiModel(
            name, thinking="budget", budget_range=(128, 32_768), can_disable_thinking=False
        )
    if name.startswith("gemini-2.5-flash-lite"):
        return GeminiModel(
            name, thinking="budget", budget_range=(512, 24_576), thinks_by_default=False
        )
    if name.startswith("gemini-2.5"):
        return GeminiModel(name, thinking="budget", budget_range=(1, 24_576))
    return GeminiModel(name, output_token_limit=8_192)


@dataclass(slots=True)
class ParsedRequest:
    """A validated ``generateContent`` request."""

    sim_input: SimInput
    user_text: str = ""
    candidate_count: int = 1
    max_output_tokens: int | None = None
    include_thoughts: bool = False
    thinking_budget: int | None = None
    thinking_level: str | None = None
    safety_thresholds: dict[str, str] = field(default_factory=dict)
    enum_values: list[str] = field(default_factory=list)


def prompt_token_details(parsed: ParsedRequest, total: int) -> list[dict[str, Any]]:
    images = 3 * parsed.sim_input.image_count
    details = [{"modality": "TEXT", "tokenCount": max(total - images, 0)}]
    if images:
        details.append({"modality": "IMAGE", "tokenCount": images})
    return details


# --- generic protobuf-JSON reading ---------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _message(value: Any, path: str, known: frozenset[str]) -> dict[str, Any]:
    """Return the fields of a JSON object keyed by camelCase name, rejecting unknown ones."""
    if not isinstance(value, dict):
        raise _bad_request(path, f"Invalid value at '{path}' (TYPE_MESSAGE), {json.dumps(value)}")
    fields: dict[str, Any] = {}
    for key, item in value.items():
        name = _camel(key)
        if name not in known:
            where = f" at '{path}'" if path else ""
            raise _bad_request(
                path,
                f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.',
            )
        fields[name] = item
    return fields


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_request(path, f"Invalid value at '{path}' (TYPE_FLOAT), {json.dumps(value)}")
    return float(value)


def _integer(value: Any, path: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_request(path, f"Invalid value at '{path}' (TYPE_INT32), {json.dumps(value)}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _bad_request(path, f"Invalid value at '{path}' (TYPE_STRING), {json.dumps(value)}")
    return value


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _bad_request(path, f"Invalid value at '{path}' (TYPE_BOOL), {json.dumps(value)}")
    return value


def _array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad_request(path, f"Invalid value at '{path}' (TYPE_MESSAGE), {json.dumps(value)}")
    return value


def _enum(value: Any, path: str, allowed: Any, enum_name: str) -> str:
    if not isinstance(value, str) or value.upper() not in allowed:
        full_name = f"type.googleapis.com/google.ai.generativelanguage.v1beta.{enum_name}"
        raise _bad_request(path, f"Invalid value at '{path}' ({full_name}), {json.dumps(value)}")
    return value.upper()


# --- generateContent -----------------------------------------------------------------


def parse_generate_request(
    body: dict[str, Any], model: GeminiModel, *, vertex: bool
) -> ParsedRequest:
    """Validate a ``generateContent`` body and turn it into the shared ``SimInput``."""
    fields = _message(body, "", _REQUEST_FIELDS)
    parsed = ParsedRequest(sim_input=SimInput(model=model.name))
    system = fields.get("systemInstruction")
    if system is not None:
        _read_content(system, "system_instruction", parsed, vertex=False, system=True)
    contents = fields.get("contents")
    if not contents:
        raise _field_error("contents", "contents is not specified")
    for index, content in enumerate(_array(contents, "contents")):
        _read_content(content, f"contents[{index}]", parsed, vertex=vertex, system=False)
    _read_turns(contents, parsed, model)
    if "tools" in fields:
        _read_tools(fields["tools"], parsed)
    if "toolConfig" in fields:
        _read_tool_config(fields["toolConfig"], parsed)
    if "safetySettings" in fields:
        _read_safety(fields["safetySettings"], parsed)
    if "generationConfig" in fields:
        _read_generation_config(fields["generationConfig"], parsed, model)
    return parsed


def _read_content(
    value: Any, path: str, parsed: ParsedRequest, *, vertex: bool, system: bool
) -> None:
    content = _message(value, path, frozenset({"role", "parts"}))
    role = content.get("role", "")
    # The Gemini API reads a missing role as "user"; Vertex AI requires it.
    if not system and (role or vertex) and role not in ("user", "model"):
        raise _bad_request(f"{path}.role", "Please use a valid role: user, model.")
    parts = content.get("parts")
    if not parts:
        raise _field_error(f"{path}.parts", "contents.parts must not be empty.")
    for index, part in enumerate(_array(parts, f"{path}.parts")):
        _read_part(part, f"{path}.parts[{index}]", parsed, role or "user")


def _read_part(value: Any, path: str, parsed: ParsedRequest, role: str) -> None:
    part = _message(value, path, _PART_FIELDS)
    present = [name for name in _PART_DATA if name in part]
    if len(present) != 1:
        raise _field_error(
            f"{path}.data", "required oneof field 'data' must have one initialized field"
        )
    sim = parsed.sim_input
    kind = present[0]
    if kind == "text":
        text = _string(part["text"], f"{path}.text")
        sim.texts.append(text)
        if role == "user":
            parsed.user_text += text + "\n"
    elif kind in ("inlineData", "fileData"):
        _read_media(part[kind], f"{path}.{_snake(kind)}", kind, sim)
    elif kind == "functionCall":
        call = _message(part[kind], f"{path}.function_call", _CALL_FIELDS)
        name = _string(call.get("name", ""), f"{path}.function_call.name")
        if not name:
            raise _field_error(f"{path}.function_call.name", "Name is not specified.")
        sim.texts.append(name + " " + json.dumps(call.get("args") or {}))
    elif kind == "functionResponse":
        result = _message(part[kind], f"{path}.function_response", _RESULT_FIELDS)
        if not result.get("name"):
            raise _field_error(f"{path}.function_response.name", "Name is not specified.")
        if not isinstance(result.get("response"), dict):
            message = "response must be a JSON object."
            raise _field_error(f"{path}.function_response.response", message)
        sim.texts.append(json.dumps(result["response"]))
    else:
        sim.texts.append(json.dumps(part[kind]))


def _read_media(value: Any, path: str, kind: str, sim: SimInput) -> None:
    blob = _message(value, path, _BLOB_FIELDS)
    mime = _string(blob.get("mimeType", ""), f"{path}.mime_type")
    if kind == "fileData":
        if not blob.get("fileUri"):
            raise _field_error(f"{path}.file_uri", "file_uri is not specified")
    else:
        data = _string(blob.get("data", ""), f"{path}.data")
        try:
            base64.b64decode(data, validate=True)
        except binascii.Error:
            message = (
                f"Invalid value at '{path}.data' (TYPE_BYTES), "
                f'Base64 decoding failed for "{data[:40]}"'
            )
            raise _bad_request(f"{path}.data", message) from None
        if not mime:
            raise _field_error(f"{path}.mime_type", "mime_type is not specified")
    if mime.startswith("image/"):
        sim.image_count += 1


def _read_turns(contents: list[Any], parsed: ParsedRequest, model: GeminiModel) -> None:
    """Find the last user text, the tool results of the last turn and check signatures."""
    sim = parsed.sim_input
    turn_start = 0
    for index, content in enumerate(contents):
        parts = content.get("parts") or []
        texts = [p["text"] for p in parts if "text" in p]
        if content.get("role", "user") == "user" and texts:
            sim.last_user_text = "\n".join(texts)
            turn_start = index
    last = contents[-1]
    if last.get("role", "user") == "user":
        for part in last.get("parts") or []:
            result = part.get("functionResponse", part.get("function_response"))
            if isinstance(result, dict):
                sim.tool_results.append(json.dumps(result.get("response"), sort_keys=True))
    if model.signatures:
        _check_signatures(contents, turn_start)


def _check_signatures(contents: list[Any], turn_start: int) -> None:
    for index in range(turn_start + 1, len(contents)):
        content = contents[index]
        if content.get("role") != "model":
            continue
        calls = [
            p for p in content.get("parts") or [] if "functionCall" in p or "function_call" in p
        ]
        if not calls:
            continue
        first = calls[0]
        signature = first.get("thoughtSignature", first.get("thought_signature"))
        call = first.get("functionCall", first.get("function_call")) or {}
        if not signature:
            raise GoogleError(
                400,
                "Function call is missing a thought_signature in functionCall parts. This is "
                "required for tools to work correctly, and missing thought_signature may lead "
                "to degraded model performance. Additional data, function call "
                f"`default_api:{call.get('name', '')}` , position {index + 1}. Please refer to "
                "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
            )
        if signature in _SKIP_SIGNATURES:
            continue
        try:
            valid = base64.b64decode(signature, validate=True).startswith(_SIGNATURE_PREFIX)
        except (binascii.Error, TypeError):
            valid = False
        if not valid:
            # NOTE: the wording of the real corrupted-signature error is not confirmed.
            raise GoogleError(400, "Corrupted thought signature.")


def _json_schema(schema: Any) -> dict[str, Any]:
    """Convert an OpenAPI-subset ``Schema`` (upper-case types) into plain JSON Schema."""
    if not isinstance(schema, dict):
        return {}
    result: dict[str, Any] = {}
    for key, value in schema.items():
        name = _camel(key)
        if name == "type" and isinstance(value, str):
            result["type"] = value.lower()
        elif name == "properties" and isinstance(value, dict):
            result["properties"] = {k: _json_schema(v) for k, v in value.items()}
        elif name == "items":
            result["items"] = _json_schema(value)
        elif name == "anyOf" and isinstance(value, list) and value:
            result |= _json_schema(value[0])
        else:
            result[name] = value
    return result


def _read_tools(value: Any, parsed: ParsedRequest) -> None:
    for index, tool in enumerate(_array(value, "tools")):
        fields = _message(tool, f"tools[{index}]", _TOOL_FIELDS)
        # NOTE: built-in tools (search, code execution, URL context) are accepted and ignored.
        path = f"tools[{index}].function_declarations"
        for number, declaration in enumerate(_array(fields.get("functionDeclarations", []), path)):
            _read_declaration(declaration, f"{path}[{number}]", parsed)


def _read_declaration(value: Any, path: str, parsed: ParsedRequest) -> None:
    declaration = _message(value, path, _DECLARATION_FIELDS)
    name = _string(declaration.get("name", ""), f"{path}.name")
    if not _FUNCTION_NAME.match(name):
        raise _field_error(
            f"{path}.name",
            "Invalid function name. Must start with a letter or an underscore. Must be "
            "alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or dashes "
            "(-), with a maximum length of 64.",
        )
    if "parameters" in declaration and "parametersJsonSchema" in declaration:
        message = "parameters and parameters_json_schema cannot both be set."
        raise _field_error(f"{path}.parameters", message)
    schema = declaration.get("parametersJsonSchema") or _json_schema(declaration.get("parameters"))
    parsed.sim_input.tools.append((name, schema if isinstance(schema, dict) else {}))


def _read_tool_config(value: Any, parsed: ParsedRequest) -> None:
    config = _message(
        value,
        "tool_config",
        frozenset({"functionCallingConfig", "retrievalConfig", "includeServerSideToolInvocations"}),
    )
    calling = config.get("functionCallingConfig")
    if calling is None:
        return
    path = "tool_config.function_calling_config"
    fields = _message(
        calling, path, frozenset({"mode", "allowedFunctionNames", "streamFunctionCallArguments"})
    )
    modes = {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}
    mode = _enum(
        fields.get("mode", "AUTO"),
        f"{path}.mode",
        modes,
        "FunctionCallingConfig.Mode",
    )
    allowed = [
        _string(n, f"{path}.allowed_function_names")
        for n in _array(fields.get("allowedFunctionNames", []), f"{path}.allowed_function_names")
    ]
    sim = parsed.sim_input
    if mode in ("ANY", "VALIDATED") and not sim.tools:
        raise _field_error(
            f"{path}.mode", "Function calling config is set without function_declarations."
        )
    if allowed and mode not in ("ANY", "VALIDATED"):
        raise _field_error(
            f"{path}.allowed_function_names",
            "allowed_function_names should be set only when mode is ANY.",
        )
    declared = {name for name, _ in sim.tools}
    for name in allowed:
        if name not in declared:
            raise _field_error(
                f"{path}.allowed_function_names", f"function {name!r} is not declared in tools."
            )
    if allowed:
        sim.tools = [tool for tool in sim.tools if tool[0] in allowed]
    if mode == "NONE":
        sim.tool_choice = "none"
    elif mode == "ANY":
        sim.tool_choice = allowed[0] if len(allowed) == 1 else "required"


def _read_safety(value: Any, parsed: ParsedRequest) -> None:
    for index, setting in enumerate(_array(value, "safety_settings")):
        path = f"safety_settings[{index}]"
        fields = _message(setting, path, frozenset({"category", "threshold", "method"}))
        category = _enum(
            fields.get("category"),
            f"{path}.category",
            _HARM_CATEGORIES,
            "HarmCategory",
        )
        threshold = _enum(
            fields.get("threshold"),
            f"{path}.threshold",
            _THRESHOLDS,
            "SafetySetting.HarmBlockThreshold",
        )
        parsed.safety_thresholds[category] = threshold


def _read_generation_config(value: Any, parsed: ParsedRequest, model: GeminiModel) -> None:
    config = _message(value, "generation_config", _GENERATION_FIELDS)
    sim = parsed.sim_input

    def path(name: str) -> str:
        return f"generation_config.{_snake(name)}"

    def check_range(
        name: str, number: float, low: float, high: float, *, high_open: bool = False
    ) -> None:
        if number < low or number > high or (high_open and number == high):
            bound = f"{high} (exclusive)" if high_open else f"{high} (inclusive)"
            raise _field_error(
                path(name),
                f"{_snake(name)} must be in the range from {low} (inclusive) to {bound}, "
                f"got {number:g}.",
            )

    if "temperature" in config:
        check_range("temperature", _number(config["temperature"], path("temperature")), 0.0, 2.0)
    if "topP" in config:
        check_range("topP", _number(config["topP"], path("topP")), 0.0, 1.0)
    if "topK" in config:
        check_range("topK", _integer(config["topK"], path("topK")), 1, 1_000_000)
    for name in ("presencePenalty", "frequencyPenalty"):
        if name in config:
            check_range(name, _number(config[name], path(name)), -2.0, 2.0, high_open=True)
    if "seed" in config:
        _integer(config["seed"], path("seed"))
    if "candidateCount" in config:
        count = _integer(config["candidateCount"], path("candidateCount"))
        check_range("candidateCount", count, 1, 8)
        parsed.candidate_count = count
    if "maxOutputTokens" in config:
        limit = _integer(config["maxOutputTokens"], path("maxOutputTokens"))
        check_range("maxOutputTokens", limit, 1, model.output_token_limit)
        parsed.max_output_tokens = sim.max_tokens = limit
    if "stopSequences" in config:
        stops = [
            _string(s, path("stopSequences"))
            for s in _array(config["stopSequences"], path("stopSequences"))
        ]
        if len(stops) > 5:
            raise _field_error(
                path("stopSequences"),
                f"stop_sequences must have at most 5 elements, got {len(stops)}.",
            )
        sim.stop = stops
    if "responseLogprobs" in config:
        _boolean(config["responseLogprobs"], path("responseLogprobs"))
    if "logprobs" in config:
        check_range("logprobs", _integer(config["logprobs"], path("logprobs")), 0, 20)
        if not config.get("responseLogprobs"):
            raise _field_error(
                path("logprobs"), "logprobs can only be set when response_logprobs is true."
            )
    _read_output_format(config, parsed, path)
    if "thinkingConfig" in config:
        _read_thinking(config["thinkingConfig"], parsed, model)


def _read_output_format(config: dict[str, Any], parsed: ParsedRequest, path: Any) -> None:
    mime = config.get("responseMimeType")
    if mime is not None and _string(mime, path("responseMimeType")) not in _MIME_TYPES:
        raise _field_error(
            path("responseMimeType"),
            f"allowed mimetypes are {', '.join(repr(m) for m in _MIME_TYPES)}, got {mime!r}.",
        )
    has_schema = "responseSchema" in config
    has_json_schema = "responseJsonSchema" in config
    if has_schema and has_json_schema:
        raise _field_error(
            path("responseSchema"), "response_schema and response_json_schema cannot both be set."
        )
    if (has_schema or has_json_schema) and mime not in ("application/json", "text/x.enum"):
        raise _field_error(
            path("responseMimeType"),
            "response_mime_type must be 'application/json' or 'text/x.enum' when a response "
            "schema is set.",
        )
    schema = (
        _json_schema(config["responseSchema"]) if has_schema else config.get("responseJsonSchema")
    )
    if has_json_schema and not isinstance(schema, dict):
        raise _field_error(
            path("responseJsonSchema"), "response_json_schema must be a JSON object."
        )
    sim = parsed.sim_input
    if mime == "text/x.enum":
        enum = (schema or {}).get("enum") if isinstance(schema, dict) else None
        if not enum:
            raise _field_error(
                path("responseSchema"), "an enum schema is required for text/x.enum."
            )
        parsed.enum_values = [str(item) for item in enum]
    elif mime == "application/json":
        sim.json_mode = True
        sim.json_schema = schema if isinstance(schema, dict) and schema else None


def _read_thinking(value: Any, parsed: ParsedRequest, model: GeminiModel) -> None:
    base = "generation_config.thinking_config"
    config = _message(
        value, base, frozenset({"thinkingBudget", "thinkingLevel", "includeThoughts"})
    )
    if model.thinking == "none":
        raise _field_error(base, f"Thinking is not enabled for models/{model.name}.")
    if "includeThoughts" in config:
        parsed.include_thoughts = _boolean(config["includeThoughts"], f"{base}.include_thoughts")
    if "thinkingBudget" in config and "thinkingLevel" in config:
        raise _field_error(base, "thinking_budget and thinking_level cannot both be set.")
    if "thinkingLevel" in config:
        levels = {level.upper() for level in model.levels}
        level = _enum(
            config["thinkingLevel"],
            f"{base}.thinking_level",
            levels | {"THINKING_LEVEL_UNSPECIFIED"},
            "ThinkingConfig.ThinkingLevel",
        )
        if not model.levels:
            raise _field_error(
                f"{base}.thinking_level", "Thinking level is not supported for this model."
            )
        parsed.thinking_level = level.lower()
    if "thinkingBudget" in config:
        budget = _integer(config["thinkingBudget"], f"{base}.thinking_budget")
        low, high = model.budget_range
        if budget == 0 and not model.can_disable_thinking:
            raise _field_error(
                f"{base}.thinking_budget",
                "Budget 0 is invalid. This model only works in thinking mode.",
            )
        if budget not in (-1, 0) and not low <= budget <= high and model.thinking == "budget":
            raise _field_error(
                f"{base}.thinking_budget",
                f"The thinking budget {budget} is invalid. Please choose a value between {low} "
                f"and {high}.",
            )
        parsed.thinking_budget = None if budget == -1 else budget
