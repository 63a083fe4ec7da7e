"""ONNX Runtime and OpenVINO backends for local sentence-transformers models (``--backend``).

The model's modules (transformer, pooling, normalisation) are exported once to ONNX with
``torch.onnx`` from the weights already on this machine (nothing is downloaded) and cached
under the madapt cache directory, keyed by the model's files and the versions that shape the
graph. (ONNX Runtime's dynamic int8 quantisation was measured and left out: its vectors fell
far below the cosine to torch kept here; docs/benchmarks.md.)

Texts are tokenised by the sentence-transformers model itself (same truncation, same prompt
handling as a torch ``encode``); only the forward pass runs in ONNX Runtime or OpenVINO,
whose CPU kernels beat torch's eager ones on small models. Vectors differ from torch's by
float rounding only (cosine >= 0.999 at fp32; see docs/benchmarks.md).

Precision (``--precision``): ``fp32`` everywhere; ``bf16`` for torch and OpenVINO on CPUs
with native bfloat16 arithmetic (AVX-512 BF16 or AMX), refused elsewhere (emulated bf16 is
slower than fp32). Its vectors differ from fp32's by more than rounding, so the precision is
recorded beside the backend and a table never mixes them.

onnxruntime, onnx and openvino are optional (``pip install 'madapt[fast]'``); without them
``--backend onnx|openvino`` is refused with a one-line error naming the extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from madapt_cli.errors import ProviderError, StoreError
from madapt_cli.util.cpu import cpu_has_bf16

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16")
#: the backends that run ``bf16`` (ONNX Runtime has no bf16 CPU kernels for these graphs)
BF16_BACKENDS = ("torch", "openvino")
#: bump when the exported graph changes, so old cached exports are not reused
EXPORT_VERSION = 2
EXTRA = "pip install 'madapt[fast]'"
_NEEDS = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}


def available(backend: str) -> bool:
    """Whether ``backend``'s packages are installed (torch always is)."""
    return all(importlib.util.find_spec(name) is not None for name in _NEEDS.get(backend, ()))


def check_backend(backend: str, precision: str) -> None:
    """Refuse an unknown backend or precision, or one whose packages are missing (exit 2)."""
    if backend not in BACKENDS:
        raise ProviderError(
            f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}", exit_code=2
        )
    if precision not in PRECISIONS:
        raise ProviderError(
            f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}", exit_code=2
        )
    if not available(backend):
        missing = [n for n in _NEEDS[backend] if importlib.util.find_spec(n) is None]
        raise ProviderError(
            f"--backend {backend} needs {' and '.join(missing)}: {EXTRA}", exit_code=2
        )
    if precision == "bf16" and backend not in BF16_BACKENDS:
        raise ProviderError(
            f"--precision bf16 runs on --backend {' or '.join(BF16_BACKENDS)}, not {backend}",
            exit_code=2,
        )


def check_device_precision(precision: str, device: str) -> None:
    """Refuse ``bf16`` on a CPU without native bf16 (``device`` is where the model runs)."""
    if precision == "bf16" and device == "cpu" and not cpu_has_bf16():
        raise ProviderError(
            "--precision bf16 needs a CPU with native bfloat16 (AVX-512 BF16 or AMX); "
            "this one has neither: use --precision fp32",
            exit_code=2,
        )


def _fingerprint(model_dir: Path) -> str:
    """What the exported graph depends on: the model's small files by content, its weights by
    name, size and modification time (hashing gigabytes on every load would cost seconds),
    and the exporter's versions. (The graph is fp32 whatever the precision: OpenVINO lowers
    it to bf16 when it compiles it.)"""
    import torch

    digest = hashlib.sha256(f"{EXPORT_VERSION}\0{torch.__version__}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(str(path.relative_to(model_dir)).encode())
        if stat.st_size < 4_000_000:
            digest.update(path.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def exported_model(model: Any, model_dir: Path, cache_dir: Path, fused: bool = False) -> Path:
    """The cached ONNX file of the sentence-transformers ``model`` loaded from ``model_dir``;
    exported on first use, written atomically. ``fused``: with ONNX Runtime's transformer
    fusions (its own operators, which only ONNX Runtime runs)."""
    folder = cache_dir / "onnx" / f"{model_dir.name}-{_fingerprint(model_dir)}"
    target = folder / ("model-fused.onnx" if fused else "model.onnx")
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _staged(target) as partial:
        if fused:
            partial.write_bytes(exported_model(model, model_dir, cache_dir).read_bytes())
            config = getattr(getattr(model[0], "auto_model", None), "config", None)
            _fuse(
                partial,
                getattr(config, "num_attention_heads", 0),
                getattr(config, "hidden_size", 0),
            )
        else:
            _export(model, partial)
    return target


def _fuse(path: Path, heads: int, hidden: int) -> None:
    """Rewrite the traced graph with ONNX Runtime's transformer fusions (attention, layer
    norm + residual, GELU, embeddings: fp32 kernels, the same arithmetic in fewer passes over
    memory). ``heads``/``hidden``: the model's attention shape (0: let the fusion guess, which
    misses the attention of traced graphs). A graph the fusions do not recognise is kept as
    traced."""
    if importlib.util.find_spec("onnxruntime") is None:
        return
    import logging

    try:
        from onnxruntime.transformers import optimizer
    except ImportError:
        return
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        fused = optimizer.optimize_model(
            str(path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0
        )
        fused.save_model_to_file(str(path))
    except Exception:  # an architecture the fusions do not know: the traced graph still runs
        return
    finally:
        quiet.setLevel(level)


class _staged:
    """A temporary file beside ``target`` that replaces it on success (removed on failure),
    so concurrent runs and a kill never leave a half-written export."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        handle, name = tempfile.mkstemp(dir=self.target.parent, suffix=".partial.onnx")
        os.close(handle)
        self.partial = Path(name)
        return self.partial

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            os.replace(self.partial, self.target)
        else:
            self.partial.unlink(missing_ok=True)


def _export(model: Any, path: Path) -> None:
    """Trace the whole module stack (transformer -> pooling -> normalise) to ONNX, with
    eager attention: SDPA's mask shortcuts are data-dependent branches a trace would freeze."""
    import warnings

    import torch

    transformer = model[0].auto_model
    previous = getattr(transformer.config, "_attn_implementation", None)
    try:
        transformer.config._attn_implementation = "eager"
    except Exception:  # a config that refuses: its attention is traced as it is
        previous = None

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            return self.model(features)["sentence_embedding"]

    # a padded example, so the trace keeps the masking path
    ids = torch.full((2, 16), 1000, dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 9:] = 0
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Stack().eval(),
                (ids, mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={**axes, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    finally:
        if previous is not None:
            transformer.config._attn_implementation = previous


class Runner:
    """One compiled ONNX graph: ``(input_ids, attention_mask) -> vectors``."""

    def __init__(
        self, path: Path, backend: str, precision: str = "fp32", threads: int | None = None
    ) -> None:
        import torch

        self.backend = backend
        # torch's own count (OMP_NUM_THREADS, else the cores): every backend uses as many
        threads = threads or torch.get_num_threads()
        if backend == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        else:
            import openvino as ov

            core = ov.Core()
            # the precision asked for, always: OpenVINO's own CPU default is bf16 where the
            # CPU has it, which would put hardware-dependent vectors under one label
            config = {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            }
            self._compiled = core.compile_model(str(path), "CPU", config)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {
            "input_ids": input_ids.astype(np.int64, copy=False),
            "attention_mask": attention_mask.astype(np.int64, copy=False),
        }
        if self.backend == "onnx":
            return np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        return np.asarray(self._compiled(feed)[0], dtype=np.float32)


def describe(backend: str, precision: str) -> dict[str, str]:
    """The settings (store metadata and content key) of vectors made by ``backend``: none for
    torch fp32, so stores embedded before backends existed keep their keys."""
    if backend == "torch" and precision == "fp32":
        return {}
    return {"backend": backend, "precision": precision}


def check_same_backend(table: str, existing: dict[str, Any], incoming: dict[str, Any]) -> None:
    """Refuse a local model's vectors from another backend or precision than the table's
    (tables without one were made by torch at fp32): they differ by rounding, and a table
    whose rows mix them would say it holds one kind."""

    def made_by(metadata: dict[str, Any]) -> tuple[str, str]:
        return metadata.get("backend", "torch"), metadata.get("precision", "fp32")

    if existing.get("provider") != "local" or made_by(existing) == made_by(incoming):
        return
    held, new = made_by(existing), made_by(incoming)
    raise StoreError(
        f"table '{table}' holds vectors of --backend {held[0]} ({held[1]}), not {new[0]} "
        f"({new[1]}): embed with --backend {held[0]}"
        + (f" --precision {held[1]}" if held[1] != "fp32" else "")
        + ", or write to another --table or --out store"
    )
