"""The OCR actors: one per document type, each on its own queue."""

from __future__ import annotations

from typing import Any

import dramatiq

from actors.job import process_document
from actors.runtime import runtime
from control_plane.dispatch import ACTOR_NAMES, QUEUE_NAMES, DocumentMessage


@dramatiq.actor(actor_name=ACTOR_NAMES["index"], queue_name=QUEUE_NAMES["index"], max_retries=0)
def ocr_index(payload: dict[str, Any]) -> None:
    """OCR one index document (a register page: rows and columns)."""
    process_document(runtime(), DocumentMessage.from_json(payload))


@dramatiq.actor(actor_name=ACTOR_NAMES["acte"], queue_name=QUEUE_NAMES["acte"], max_retries=0)
def ocr_acte(payload: dict[str, Any]) -> None:
    """OCR one acte (a deed: full text in reading order)."""
    process_document(runtime(), DocumentMessage.from_json(payload))
