"""``geode.Retriever``: a DSPy module that searches a collection and returns passages with ids and scores.

It is an ordinary ``dspy.Module``: use it inside a workflow (``self.retrieve(query=q).passages``) or hand
:meth:`Retriever.as_tool` to a ReAct agent. It emits no spans itself; its class attribute
``geode_span_kind = "RETRIEVER"`` tells the runtime's instrumentation to record each call as a RETRIEVER
span with the returned passages as ``retrieval.documents``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, ClassVar, cast

import dspy  # pyright: ignore[reportMissingTypeStubs]

from geode.errors import InputError
from geode.retrieval.base import Embedder, FilterValue, Hit, Store, check_compatible
from geode.retrieval.qdrant import check_collection_name

__all__ = ["Passage", "Retriever", "format_passages"]


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk.

    Attributes:
        id: The point id in the store (stable across re-ingestion of the same file).
        text: The chunk's text (starting with its heading path, if any).
        score: Similarity to the query; higher is closer (cosine similarity for the local embedder).
        metadata: The rest of the payload: ``source``, ``title``, ``heading``, ``chunk_index``,
            ``chunk_count``, ``page``/``line`` where known, and any user metadata.
    """

    id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict[str, Any])

    @classmethod
    def from_hit(cls, hit: Hit) -> Passage:
        """A passage from a store hit: ``text`` out of the payload, the rest into ``metadata``."""
        payload = dict(hit.payload)
        text = payload.pop("text", "")
        return cls(id=hit.id, text=str(text), score=hit.score, metadata=payload)

    @property
    def source(self) -> str | None:
        """Where the chunk came from (a file path), if recorded."""
        source = self.metadata.get("source")
        return str(source) if source is not None else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``id``, ``score``, ``text``, ``metadata``."""
        return {"id": self.id, "score": self.score, "text": self.text, "metadata": dict(self.metadata)}


def format_passages(passages: list[Passage], *, max_chars: int | None = 1200) -> str:
    """Passages as numbered blocks with id, source and score, for an LM to read and cite."""
    blocks: list[str] = []
    for rank, p in enumerate(passages, start=1):
        where = PurePath(p.source).name if p.source else "unknown source"
        if p.metadata.get("page") is not None:
            where += f", page {p.metadata['page']}"
        text = p.text if max_chars is None or len(p.text) <= max_chars else p.text[:max_chars] + " [...]"
        blocks.append(f"[{rank}] id={p.id} source={where} score={p.score:.3f}\n{text}")
    return "\n\n".join(blocks)


class Retriever(dspy.Module):
    r"""Searches one collection of a :class:`~geode.retrieval.base.Store` with an embedder.

    Args:
        store: The vector store.
        embedder: Embeds queries; must be the one the collection was built with (checked on first use).
        collection: The collection to search.
        k: Passages returned when ``forward`` is not given ``k``.

    Example:
        >>> from geode.retrieval import QdrantStore, Retriever
        >>> from geode.testing import HashingEmbedder
        >>> retriever = Retriever(QdrantStore.memory(), HashingEmbedder(), collection="docs")
        >>> retriever(query="refund policy").passages  # doctest: +SKIP
        [Passage(id='...', text='Returns\n\nRefunds are issued within 14 days...', score=0.71, ...)]
    """

    geode_span_kind: ClassVar[str] = "RETRIEVER"

    def __init__(self, store: Store, embedder: Embedder, collection: str = "docs", k: int = 5) -> None:
        super().__init__()  # pyright: ignore[reportUnknownMemberType]  (dspy is untyped)
        if k < 1:
            raise InputError(f"k must be at least 1, not {k}")
        self.store = store
        self.embedder = embedder
        self.collection = check_collection_name(collection)
        self.k = k
        self._checked = False

    def _check(self) -> None:
        # Once per retriever; a race only repeats an idempotent check (no lock: modules get deep-copied).
        if not self._checked:
            check_compatible(self.store.get_collection(self.collection), self.embedder)
            self._checked = True

    def forward(
        self, query: str, k: int | None = None, filter: Mapping[str, FilterValue] | None = None
    ) -> dspy.Prediction:
        """Return the ``k`` passages closest to ``query`` whose metadata matches ``filter``.

        Args:
            query: What to search for.
            k: How many passages (default: the retriever's ``k``).
            filter: Payload conditions, all of which must hold: a value matches equal values, a list
                matches any of its values (``{"source": "/docs/faq.md"}``, ``{"lang": ["en", "de"]}``).

        Returns:
            ``dspy.Prediction(passages=[Passage, ...])``, best first.

        Raises:
            InputError: ``query`` is empty or ``k`` < 1.
            CollectionNotFoundError: The collection does not exist (the message names those that do).
            RetrievalError: The collection was built with a different embedder.
            StoreUnavailableError: The store is down, locked or too slow.
        """
        # An LM calling the tool may pass anything, whatever the annotation says.
        if not isinstance(query, str) or not query.strip():  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InputError("the search query is empty")
        limit = self.k if k is None else k
        if limit < 1:
            raise InputError(f"k must be at least 1, not {limit}")
        self._check()
        vector = self.embedder.embed_query(query)
        hits = self.store.search(self.collection, vector, k=limit, filter=filter)
        return dspy.Prediction(passages=[Passage.from_hit(h) for h in hits])

    def as_tool(self, name: str = "search", description: str | None = None) -> Callable[[str], str]:
        """This retriever as a plain typed function ``search(query: str) -> str`` for a ReAct agent.

        The function returns the top passages as numbered blocks with their ids and sources, so the
        agent can quote and cite them. Each call goes through the module, so it is traced as a
        RETRIEVER span under the agent's TOOL span.

        Args:
            name: The tool's name as the agent sees it.
            description: What the agent is told the tool does; default: searching this collection.
        """
        retriever = self

        def search(query: str) -> str:
            passages: list[Passage] = cast(Any, retriever(query=query)).passages  # dspy is untyped
            if not passages:
                return f"No passages found for {query!r}."
            return format_passages(passages)

        search.__name__ = name
        search.__qualname__ = name
        search.__doc__ = description or (
            f"Search the {self.collection!r} knowledge base for passages relevant to `query` (a few keywords "
            "or a question). Returns the top passages, each with its id, source file and score."
        )
        return search
