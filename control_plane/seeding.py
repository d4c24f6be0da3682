"""`python scheduler.py seed`: sample PDFs on disk, queued as ready documents.

The PDFs go under OCR_LOCAL_DOCUMENTS_DIR and the rows point at them with
`file://` URLs, inserted the way the registre component does it: only
`document_source`, `storage_path` and `status_id = 3`.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from control_plane.config import EnvironmentConfig, Settings
from control_plane.errors import ConfigError
from control_plane.samples import SampleDocument, sample_document

READY = 3


def write_samples(
    directory: Path, index: int, acte: int, start: int = 1
) -> list[tuple[SampleDocument, Path]]:
    """Generate `index` + `acte` sample PDFs in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for source, count in (("index", index), ("acte", acte)):
        for n in range(start, start + count):
            doc = sample_document(source, n)
            path = directory / f"{doc.name}.pdf"
            path.write_bytes(doc.pdf)
            made.append((doc, path))
    return made


def insert_ready(env: EnvironmentConfig, rows: list[tuple[str, str]]) -> list[int]:
    """Insert (document_source, storage_path) rows as ready; returns their ids."""
    if env.database_url is not None:
        with psycopg.connect(env.database_url.get_secret_value(), connect_timeout=10) as conn:
            ids = []
            with conn.cursor() as cur:
                for source, path in rows:
                    cur.execute(
                        "INSERT INTO extraction_queue (document_source, storage_path, status_id) "
                        "VALUES (%s, %s, %s) RETURNING id",
                        (source, path, READY),
                    )
                    row = cur.fetchone()
                    assert row is not None
                    ids.append(int(row[0]))
            return ids
    if env.has_supabase:
        from supabase import create_client

        assert env.supabase_url is not None and env.supabase_service_key is not None
        client = create_client(env.supabase_url, env.supabase_service_key.get_secret_value())
        payload = [{"document_source": s, "storage_path": p, "status_id": READY} for s, p in rows]
        result = client.table("extraction_queue").insert(payload).execute()
        return [int(row["id"]) for row in result.data if isinstance(row, dict)]
    raise ConfigError(f"{env.name.upper()}: no database URL or Supabase project to seed")


def seed_documents(
    settings: Settings, *, index: int, acte: int, environment: str | None = None, start: int = 1
) -> dict[str, object]:
    """Write sample PDFs and queue them in one environment."""
    if not settings.ocr_local_documents_dir:
        raise ConfigError("OCR_LOCAL_DOCUMENTS_DIR: must be set to seed local sample documents")
    envs = {e.name: e for e in settings.environments}
    env = envs.get(environment) if environment else settings.environments[0]
    if env is None:
        raise ConfigError(f"--environment {environment!r} is not configured ({', '.join(envs)})")
    directory = Path(settings.ocr_local_documents_dir).resolve() / env.name
    made = write_samples(directory, index, acte, start)
    insert_ready(env, [(doc.document_source, path.as_uri()) for doc, path in made])
    return {"index": index, "acte": acte, "environment": env.name}
