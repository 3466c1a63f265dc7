"""A deterministic hashing embedder for unit tests: no model, no download, microseconds per text.

It hashes lowercased word unigrams and bigrams into a fixed number of signed buckets and L2-normalises
the counts, so texts sharing words are close and unrelated texts are nearly orthogonal. That is enough to
test ranking, filters and ingestion logic; it is *not* a semantic model (no synonyms), so never use it
outside tests.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence

import numpy as np

from geode.retrieval.base import Distance, Embedder, Vectors

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Feature-hashing :class:`~geode.retrieval.base.Embedder` for tests.

    Args:
        dimension: Number of buckets (the vector length).
        name: Name recorded on collections; default ``hashing-<dimension>``.

    Example:
        >>> from geode.testing import HashingEmbedder
        >>> e = HashingEmbedder(dimension=64)
        >>> float(e.embed_query("red tent") @ e.embed_query("a red tent")) > 0.5
        True
    """

    def __init__(self, dimension: int = 256, *, name: str | None = None) -> None:
        self._dimension = dimension
        self._name = name or f"hashing-{dimension}"

    @property
    def name(self) -> str:
        """The name recorded on collections."""
        return self._name

    @property
    def dimension(self) -> int:
        """Vector length."""
        return self._dimension

    @property
    def distance(self) -> Distance:
        """Cosine."""
        return "cosine"

    def _vector(self, text: str) -> Vectors:
        vec = np.zeros(self._dimension, dtype=np.float32)
        words = [w.lower() for w in _WORD.findall(text)]
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self._dimension
            vec[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            # An empty or punctuation-only text still needs a valid (non-zero) cosine vector.
            vec[0] = 1.0
            return vec
        return vec / norm

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """One normalised row per text."""
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])

    def embed_query(self, text: str) -> Vectors:
        """A normalised 1-D vector."""
        return self._vector(text)


def _typecheck(embedder: HashingEmbedder) -> Embedder:
    # Fails type-checking if HashingEmbedder stops satisfying the Embedder protocol.
    return embedder
