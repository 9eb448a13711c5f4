"""Optional deeper recognisers (such as Presidio with a spaCy model) that a policy switches on.

A policy names a recogniser in ``spec.recognizers``. ``compile_policies`` builds it through
``build_recognizer``, which fails with ``RecognizerError`` when the recogniser is not
registered or its package or model is not installed, so such a policy never becomes active.
No recogniser package or model is imported or loaded unless a policy names the recogniser.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from smartflow.core.errors import ConfigError
from smartflow.policy.detectors import Detector, Finding, ScanContext

__all__ = [
    "PRESIDIO",
    "PresidioRecognizer",
    "RecognizerError",
    "RecognizerFactory",
    "RecognizerOptions",
    "build_recognizer",
    "register_recognizer",
    "registered_recognizers",
    "unregister_recognizer",
]

logger = logging.getLogger(__name__)

PRESIDIO = "presidio"


class RecognizerError(ConfigError):
    """A recogniser that cannot be built; ``param`` is the field of the policy entry to fix.

    ``param`` is ``name`` (unknown or not installed), ``model`` (model not installed),
    ``language`` or ``entities`` (not supported by the recogniser).
    """


@dataclass(frozen=True, slots=True)
class RecognizerOptions:
    """The settings of one ``spec.recognizers`` entry that the recogniser needs."""

    entities: frozenset[str]
    min_score: float
    language: str = "en"
    model: str = ""
    """The installed model package to load; empty means the recogniser's default."""


class RecognizerFactory(Protocol):
    """Builds a detector for a policy entry; registered once under ``name``."""

    @property
    def name(self) -> str: ...

    def create(self, options: RecognizerOptions) -> Detector:
        """Build a detector that reports only ``options.entities``.

        Raises:
            RecognizerError: the package or model is not installed, or the language or an
                entity type is not supported.
        """
        ...


_registry: dict[str, RecognizerFactory] = {}
_registry_lock = threading.Lock()


def register_recognizer(factory: RecognizerFactory, *, replace: bool = False) -> None:
    """Make ``factory`` available to policies under ``factory.name``.

    Raises:
        ValueError: the name is registered already and ``replace`` is false.
    """
    with _registry_lock:
        if factory.name in _registry and not replace:
            raise ValueError(f"recognizer {factory.name!r} is registered already")
        _registry[factory.name] = factory
    logger.info("registered recognizer %s", factory.name)


def unregister_recognizer(name: str) -> None:
    """Remove a registered recogniser; policies compiled later can no longer use it."""
    with _registry_lock:
        _registry.pop(name, None)


def registered_recognizers() -> tuple[str, ...]:
    """Return the names that ``spec.recognizers[].name`` accepts, sorted."""
    with _registry_lock:
        return tuple(sorted(_registry))


def build_recognizer(name: str, options: RecognizerOptions) -> Detector:
    """Build the detector of the recogniser registered as ``name``.

    Raises:
        RecognizerError: ``name`` is not registered, or its factory raised it.
    """
    with _registry_lock:
        factory = _registry.get(name)
    if factory is None:
        known = ", ".join(registered_recognizers()) or "none"
        raise RecognizerError(
            f"unknown recognizer {name!r}; registered recognizers: {known}", param="name"
        )
    return factory.create(options)


# --- presidio ------------------------------------------------------------------------

PRESIDIO_DEFAULT_MODEL = "en_core_web_lg"
_PRESIDIO_INSTALL = (
    "install presidio-analyzer on every gateway host (pip install presidio-analyzer) "
    "together with a spaCy model package such as en_core_web_lg; the gateway never "
    "downloads a model"
)


class PresidioRecognizer:
    """The ``presidio`` recogniser: Presidio's analyzer over an installed spaCy model.

    ``presidio_analyzer`` is imported when a policy first names this recogniser. One
    analyzer per language and model is loaded and shared by every policy version.

    NOTE: written against the presidio-analyzer 2.2 API (``NlpEngineProvider``,
    ``AnalyzerEngine.analyze``) and not run here, because neither Presidio nor a spaCy
    model is installed. ``find`` runs the model in the gateway's event loop, so a long text
    delays other requests on that worker.
    """

    name = PRESIDIO

    def __init__(self) -> None:
        self._analyzers: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def create(self, options: RecognizerOptions) -> Detector:
        model = options.model or PRESIDIO_DEFAULT_MODEL
        analyzer = self._analyzer(options.language, model)
        supported = set(analyzer.get_supported_entities(language=options.language))
        unsupported = sorted(options.entities - supported)
        if unsupported:
            raise RecognizerError(
                f"presidio with model {model} does not report {', '.join(unsupported)}; "
                f"supported entity types: {', '.join(sorted(supported))}",
                param="entities",
            )
        return _PresidioDetector(analyzer, options)

    def _analyzer(self, language: str, model: str) -> Any:
        with self._lock:
            key = (language, model)
            analyzer = self._analyzers.get(key)
            if analyzer is None:
                analyzer = _load_analyzer(language, model)
                self._analyzers[key] = analyzer
            return analyzer


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RecognizerError(
            f"recognizer {PRESIDIO!r} is not installed: {what} cannot be imported ({exc}); "
            + _PRESIDIO_INSTALL,
            param="name",
        ) from exc


def _load_analyzer(language: str, model: str) -> Any:
    """Load Presidio's analyzer with ``model`` for ``language``, which must be installed.

    Presidio's spaCy engine downloads a model that is not installed, so the model is
    checked here first and the engine is always given an explicit model.
    """
    analyzer_module = _import("presidio_analyzer", "presidio_analyzer")
    nlp_module = _import("presidio_analyzer.nlp_engine", "presidio_analyzer.nlp_engine")
    spacy_util = _import("spacy.util", "spacy")
    if not spacy_util.is_package(model):
        raise RecognizerError(
            f"spaCy model {model!r} for recognizer {PRESIDIO!r} is not installed; install "
            f"its package on every gateway host (for example pip install {model} from the "
            "spaCy models release), or name an installed model in model",
            param="model",
        )
    configuration = {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": language, "model_name": model}],
    }
    engine = nlp_module.NlpEngineProvider(nlp_configuration=configuration).create_engine()
    analyzer = analyzer_module.AnalyzerEngine(nlp_engine=engine, supported_languages=[language])
    logger.info("loaded presidio analyzer: language %s, spaCy model %s", language, model)
    return analyzer


class _PresidioDetector:
    """Reports Presidio's results for the entry's entity types as findings."""

    keywords: Mapping[str, tuple[str, ...]] = {}
    anchors: Mapping[str, tuple[str, ...]] = {}

    def __init__(self, analyzer: Any, options: RecognizerOptions) -> None:
        self._analyzer = analyzer
        self._options = options
        self._requested = sorted(options.entities)

    @property
    def entities(self) -> frozenset[str]:
        return self._options.entities

    def find(self, scan: ScanContext) -> list[Finding]:
        results = self._analyzer.analyze(
            text=scan.text,
            language=self._options.language,
            entities=self._requested,
            score_threshold=self._options.min_score,
        )
        text = scan.text
        return [
            Finding(result.entity_type, result.start, result.end, text[result.start : result.end])
            for result in results
            if result.entity_type in self._options.entities
            and result.score >= self._options.min_score
            and result.end > result.start
        ]


register_recognizer(PresidioRecognizer())
