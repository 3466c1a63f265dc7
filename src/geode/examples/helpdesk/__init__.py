"""The bundled helpdesk application: a knowledge corpus, questions with gold answers, an agent and a metric.

It is what ``geode demo`` runs end to end, and a template for doing the same with your own agent:

- :func:`corpus_paths`: the help centre of Northwind Outfitters (a fictional outdoor-gear shop), its
  product catalogue and Geode's own docs, a few hundred chunks once ingested into :data:`COLLECTION`;
- :func:`load_questions`: 71 questions with gold answers and a fixed train / held-out split; some need
  arithmetic over retrieved facts (two tents at the listed price plus shipping);
- :func:`build_agent`: a ``geode.Agent`` with the retrieval search tool and the calculator, and
  :func:`build_rag`, a fixed retrieve-then-answer workflow to compare it with;
- :data:`metric` (``geode.examples.helpdesk:metric``): numeric match for numbers, containment for text.

Example:
    >>> from geode.examples import helpdesk
    >>> len(helpdesk.load_questions("train")) > len(helpdesk.load_questions("heldout")) > 0
    True
"""

from geode.examples.helpdesk.corpus import (
    CHUNKING,
    COLLECTION,
    Question,
    catalog_dir,
    corpus_paths,
    docs_dir,
    helpdesk_chunker,
    load_questions,
    pick,
    questions_dataset,
    questions_path,
)
from geode.examples.helpdesk.metric import metric, score_answer
from geode.examples.helpdesk.programs import AGENT_NAME, HelpdeskAnswer, build_agent, build_rag

__all__ = [
    "AGENT_NAME",
    "CHUNKING",
    "COLLECTION",
    "HelpdeskAnswer",
    "Question",
    "build_agent",
    "build_rag",
    "catalog_dir",
    "corpus_paths",
    "docs_dir",
    "helpdesk_chunker",
    "load_questions",
    "metric",
    "pick",
    "questions_dataset",
    "questions_path",
    "score_answer",
]
