"""Query-time encoding with an adaptor: texts -> the upstream model -> f -> unit prefixes.

The upstream call (provider, model, prompt or task type, dimensions) is the one the adaptor's
training store recorded (``base_provider``, ``base_model`` and ``base_settings`` in its
config.json, written by `madapt fit`), so a query encoded today lands in the space the corpus
was applied in. Only where and how to reach the model (device, batch size, endpoint,
credentials, timeouts) comes from the caller or the environment; asking for another model,
prompt or size is refused. An adaptor fitted before ``base_settings`` was recorded gets the
provider's defaults for each role, with a warning.

Every vector goes the way `madapt embed` + `madapt apply` take it: checked, L2-normalised
(:func:`~madapt_cli.util.vectors.normalize_rows`), then :meth:`Adaptor.transform`; with a
``precision`` other than float32, coded as `madapt apply --precision` codes the stored
prefixes (:func:`~madapt_cli.store.precision.encode_prefix`): int8 with the corpus ranges
the applied store recorded (``calibration_from``), binary as packed sign bits. float32
queries against int8 or binary documents (asymmetric scoring) are the plain ``encode``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from madapt_cli.data import TextItem
from madapt_cli.errors import InputError
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.pipelines.embed_plan import plan_requests
from madapt_cli.providers.base import EmbeddingProvider, Role, build_provider, check_response
from madapt_cli.retrieval.int2 import Int2Calibration
from madapt_cli.retrieval.quantize import Int8Calibration
from madapt_cli.store.precision import (
    CALIBRATION_KEY,
    INT2_CALIBRATION_KEY,
    calibration_keys,
    check_calibration_for,
    check_precision_sizes,
    encode_prefix,
    load_calibration,
    parse_precisions,
)
from madapt_cli.util.vectors import normalize_rows

ROLES: tuple[Role, ...] = ("query", "document")

#: recorded setting -> the provider keyword that reproduces it ("{role}": the role's own);
#: settings not here (a Vertex task type) follow from the role itself
_SETTING_KEYWORDS = {
    "prompt": "{role}_prompt",
    "dimensions": "dimensions",
    "backend": "backend",  # a local model's --backend (onnx, openvino; torch is recorded as none)
    "precision": "precision",
}


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise InputError(f"--role must be query or document, not {role!r}")
    return role  # type: ignore[return-value]


def recorded_keywords(adaptor: Adaptor) -> dict[str, Any]:
    """The provider keywords that reproduce the settings recorded in ``base_settings``."""
    keywords: dict[str, Any] = {}
    for role, settings in (adaptor.config.get("base_settings") or {}).items():
        for setting, value in settings.items():
            keyword = _SETTING_KEYWORDS.get(setting)
            if keyword is not None and value is not None:
                keywords[keyword.format(role=role)] = value
    return keywords


def provider_for_adaptor(
    adaptor: Adaptor,
    *,
    provider: str | None = None,
    model: str | None = None,
    options: Mapping[str, Any] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> EmbeddingProvider:
    """The provider that makes the upstream call ``adaptor``'s training store recorded.

    ``options``: generic provider options (``device``, ``batch_size``, ``base_url``...,
    see :func:`build_provider`); a prompt or ``dimensions`` among them must equal the
    recorded one. ``provider``/``model``, when given, must be the recorded ones. Raises
    :class:`InputError` (one line) for any mismatch; nothing is loaded or sent here."""
    name = adaptor.config.get("base_provider")
    base_model = adaptor.config.get("base_model")
    if not name or not base_model:
        raise InputError(
            f"adaptor '{adaptor.name}' does not record the provider and model it was "
            "trained on (base_provider, base_model): it cannot encode texts"
        )
    if provider is not None and provider != name:
        raise InputError(
            f"adaptor '{adaptor.name}' was trained on vectors of provider {name!r}, not "
            f"{provider!r}"
        )
    # by identity: 0 (e.g. max_retries=0) is a value, though it equals False
    given = {k: v for k, v in (options or {}).items() if v is not None and v is not False}
    built = build_provider(name, model or base_model, {**recorded_keywords(adaptor), **given})
    if model is not None and built.model != build_provider(name, base_model, {}).model:
        built.close()
        raise InputError(
            f"adaptor '{adaptor.name}' was trained on vectors of model {base_model!r}, not "
            f"{built.model!r}: its map means nothing for another model"
        )
    recorded = adaptor.config.get("base_settings")
    if recorded is None and on_warning is not None:
        on_warning(
            f"adaptor '{adaptor.name}' predates recorded provider settings: using "
            f"{name}'s defaults for each role (no prompt, task type or dimensions given); "
            "refit it to record them"
        )
    for role, settings in (recorded or {}).items():
        if built.settings(role) != settings:
            built.close()
            raise InputError(
                f"adaptor '{adaptor.name}' was trained on {role} vectors made with "
                f"{settings}, not {built.settings(role)}: drop the option that changes it"
            )
    return built


def load_query_calibration(
    adaptor: Adaptor, path: str | Path, where: str = "--calibration-from", precision: str = "int8"
) -> dict[int, Any]:
    """size -> the int8 ranges (``precision`` "int2": the int2 levels) `madapt apply
    --precision int8` (int2) recorded in the applied store (or JSON file) ``path``, refused
    unless they were fitted for ``adaptor``."""
    key = INT2_CALIBRATION_KEY if precision == "int2" else CALIBRATION_KEY
    calibrations, metadata = load_calibration(path, key=key)
    check_calibration_for(calibrations, metadata, adaptor.fingerprint, [], f"{where} {path}")
    return calibrations


def code_queries(
    vectors: np.ndarray,
    precision: str,
    calibrations: Mapping[int, Any] | Int8Calibration | Int2Calibration | None = None,
) -> np.ndarray:
    """Unit prefixes (N, m) -> what a ``precision`` column of size m stores: float32,
    float16, int8 codes (with the size-m corpus ranges), packed int2 codes (with the size-m
    corpus levels) or packed sign bits (N, m/8)."""
    (precision,) = parse_precisions([precision])
    m = vectors.shape[1]
    check_precision_sizes([precision], [m], "--precision")
    calibration = calibrations
    if isinstance(calibrations, Mapping):
        calibration = calibrations.get(m)
        if calibration is None and precision in ("int8", "int2"):
            have = ", ".join(str(d) for d in sorted(calibrations)) or "none"
            raise InputError(f"no {precision} calibration for size {m} (the store has {have})")
    return encode_prefix(vectors, precision, calibration)  # type: ignore[arg-type]


_CODED = ("int8", "int2")  # the precisions whose codes need the corpus' calibration
_KIND = {CALIBRATION_KEY: "int8", INT2_CALIBRATION_KEY: "int2"}


def _by_precision(
    calibrations: Mapping[str, Mapping[int, Any]] | Mapping[int, Any],
) -> dict[str, dict[int, Any]]:
    """precision -> size -> calibration, from that or from one precision's size -> calibration
    (int2 levels or int8 ranges, by type)."""
    if all(isinstance(key, str) for key in calibrations):
        return {kind: dict(sizes) for kind, sizes in calibrations.items()}  # type: ignore[misc]
    values = list(calibrations.values())
    kind = "int2" if values and isinstance(values[0], Int2Calibration) else "int8"
    return {kind: dict(calibrations)}  # type: ignore[arg-type]


class Encoder:
    """An adaptor with the upstream model it was trained on, loaded once::

    enc = Encoder.from_adaptor("adaptors/x")
    enc.encode(["a query"], role="query", dim=128)  # (1, 128) float32, unit rows
    enc.encode(["a query"], dim=128, precision="binary")  # (1, 16) uint8 sign bits

    ``calibrations`` code int8 and int2 queries as `madapt apply --precision` coded the
    corpus: precision -> size -> calibration, or one precision's size -> calibration
    (:func:`load_query_calibration`; int8 ranges or int2 levels, told apart by their type).
    """

    def __init__(
        self,
        adaptor: Adaptor,
        provider: EmbeddingProvider,
        calibrations: Mapping[str, Mapping[int, Any]] | Mapping[int, Any] | None = None,
    ) -> None:
        self.adaptor = adaptor
        self.provider = provider
        self.calibrations = _by_precision(calibrations or {})

    @classmethod
    def from_adaptor(
        cls,
        path: str | Path,
        *,
        model: str | None = None,
        on_warning: Callable[[str], None] | None = None,
        calibration_from: str | Path | None = None,
        calibration_precision: str | None = None,
        **options: Any,
    ) -> Encoder:
        """The encoder of the adaptor directory ``path``. ``options``: how to reach the
        model (``device``, ``batch_size``, ``base_url``, ``project``, ``location``,
        ``timeout``, ``max_retries``...); ``model``: only to confirm the recorded one;
        ``calibration_from``: an applied store (or JSON file) whose int8 ranges and int2
        levels (every one it holds, or only ``calibration_precision``'s) code
        ``precision="int8"`` and ``"int2"`` queries."""
        adaptor = Adaptor.load(path)
        calibrations = {}
        if calibration_from is not None:
            keys = calibration_keys(calibration_from)
            kinds = [calibration_precision] if calibration_precision else [_KIND[k] for k in keys]
            if not kinds:
                raise InputError(
                    f"--calibration-from {calibration_from} holds no int8 or int2 calibration: "
                    "apply with --precision int8 or int2"
                )
            for kind in kinds:
                calibrations[kind] = load_query_calibration(
                    adaptor, calibration_from, precision=kind
                )
        return cls(
            adaptor,
            provider_for_adaptor(adaptor, model=model, options=options, on_warning=on_warning),
            calibrations,
        )

    @property
    def dimension(self) -> int:
        """The largest size it encodes to (the adaptor's D)."""
        return self.adaptor.dimension

    def embed_raw(self, texts: Sequence[str], role: Role = "query") -> np.ndarray:
        """The upstream vectors of ``texts``, checked and L2-normalised: (N, D) float32
        (what `madapt embed` stores)."""
        check_role(role)
        items = [TextItem(str(i), text) for i, text in enumerate(texts)]
        parts = []
        for request in plan_requests(items, self.provider):
            vectors = np.asarray(self.provider.embed_batch(request, role), dtype=np.float32)
            check_response(vectors, request, f"encoding with {self.provider.model}")
            parts.append(vectors)
        if not parts:
            return np.zeros((0, self.adaptor.dimension), dtype=np.float32)
        raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if raw.shape[1] != self.adaptor.dimension:
            raise InputError(
                f"adaptor '{self.adaptor.name}' takes {self.adaptor.dimension}-d vectors but "
                f"{self.provider.model} gives {raw.shape[1]}-d ones"
            )
        return normalize_rows(raw)

    def encode(
        self,
        texts: Sequence[str],
        role: Role = "query",
        dim: int | None = None,
        precision: str = "float32",
        calibration: Mapping[int, Any] | Int8Calibration | Int2Calibration | None = None,
    ) -> np.ndarray:
        """``texts`` through the model and the adaptor: (N, dim) float32 unit rows
        (``dim`` default: the adaptor's D), or their ``precision`` codes as `madapt apply`
        stores them: float16 (N, dim), int8 (N, dim) with ``calibration`` (default: the
        encoder's ``calibrations``), binary uint8 (N, dim / 8)."""
        dim = self.adaptor.check_dim(dim)
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        if precision != "float32":  # a bad precision or size fails before the model runs
            check_precision_sizes(parse_precisions([precision]), [dim], "--precision")
            if precision in _CODED and calibration is None and precision not in self.calibrations:
                raise InputError(
                    f"{precision} query codes need the corpus' {precision} calibration: "
                    "--calibration-from the applied store "
                    "(Encoder.from_adaptor(..., calibration_from=STORE))"
                )
        vectors = self.adaptor.transform(self.embed_raw(texts, role), dim=dim)
        if precision == "float32":
            return vectors
        return code_queries(vectors, precision, calibration or self.calibrations.get(precision))

    def close(self) -> None:
        self.provider.close()

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
