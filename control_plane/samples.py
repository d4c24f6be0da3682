"""Sample documents: small, valid PDFs with a real text layer, made without dependencies.

Used by the demo, the benchmarks and the tests. The Gemini emulator "OCRs" a PDF
by reading its text layer back, so a document made here comes back with exactly
the text that was put in, page by page.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

_PAGE_WIDTH, _PAGE_HEIGHT = 595, 842  # A4 in points
_LINE_HEIGHT = 14
_TOP = 800


def _escape(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    # WinAnsi covers French accents; anything else becomes '?'
    return out.encode("cp1252", errors="replace").decode("latin-1")


def _page_stream(text: str) -> bytes:
    ops = ["BT", "/F1 10 Tf", f"{_LINE_HEIGHT} TL", f"40 {_TOP} Td"]
    for i, line in enumerate(text.splitlines() or [""]):
        ops.append(f"({_escape(line)}) Tj" if i == 0 else f"T* ({_escape(line)}) Tj")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1")


def make_pdf(pages: list[str], *, compress: bool = True) -> bytes:
    """A PDF whose page i carries the text `pages[i]` (one line per text line)."""
    if not pages:
        raise ValueError("a PDF needs at least one page")
    objects: list[bytes] = []  # object n is objects[n-1]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(b"")  # pages tree, filled in below
    objects.append(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    kids = []
    for text in pages:
        stream = _page_stream(text)
        if compress:
            stream = zlib.compress(stream)
            header = f"<< /Length {len(stream)} /Filter /FlateDecode >>".encode()
        else:
            header = f"<< /Length {len(stream)} >>".encode()
        objects.append(header + b"\nstream\n" + stream + b"\nendstream")
        content_ref = len(objects)
        objects.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {_PAGE_WIDTH} {_PAGE_HEIGHT}] "
                f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_ref} 0 R >>"
            ).encode()
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()

    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_at = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n"
    ).encode()
    return bytes(out)


# --- realistic French land-registry content -------------------------------------

_NATURES = [
    "Vente",
    "Donation",
    "Hypothèque conventionnelle",
    "Attestation immobilière",
    "Servitude de passage",
    "Partage",
    "Bail emphytéotique",
    "Radiation",
]
_NAMES = [
    "DUPONT Jean",
    "MARTIN Marie",
    "BERNARD Luc",
    "PETIT Anne",
    "ROBERT Paul",
    "RICHARD Claire",
    "DURAND Louis",
    "LEROY Sophie",
    "MOREAU Henri",
    "SIMON Lucie",
]
_COMMUNES = ["Lyon 3e", "Villeurbanne", "Bron", "Caluire-et-Cuire", "Vénissieux"]


@dataclass(frozen=True)
class SampleDocument:
    """A generated document: its type, a stable name, its pages' text and the PDF."""

    document_source: str
    name: str
    pages: list[str]
    pdf: bytes

    @property
    def text(self) -> str:
        return "\n".join(self.pages)


def index_pages(seed: int, pages: int = 1) -> list[str]:
    """Pages of an *index des immeubles*: a table of deeds on one parcel."""
    rng = random.Random(seed)
    out = []
    for page in range(1, pages + 1):
        commune = rng.choice(_COMMUNES)
        section = f"{rng.choice('ABCDEFGH')}{rng.choice('ABCDEFGH')} {rng.randint(1, 999)}"
        lines = [
            f"INDEX DES IMMEUBLES - {commune} - parcelle {section} - feuillet {seed}-{page}",
            "Date | Nature de l'acte | Parties | Volume | Numéro",
        ]
        for _ in range(rng.randint(8, 14)):
            lines.append(
                f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1956, 2024)} | "
                f"{rng.choice(_NATURES)} | {rng.choice(_NAMES)} / {rng.choice(_NAMES)} | "
                f"{rng.randint(1000, 9999)} | {rng.randint(1, 400)}"
            )
        out.append("\n".join(lines))
    return out


def acte_pages(seed: int, pages: int = 3) -> list[str]:
    """Pages of a notarial deed: headings and running text."""
    rng = random.Random(seed)
    seller, buyer = rng.sample(_NAMES, 2)
    out = []
    for page in range(1, pages + 1):
        lines = [f"ACTE N° {seed} - page {page}/{pages}"]
        if page == 1:
            lines += [
                f"{rng.choice(_NATURES).upper()}",
                f"Par-devant Maître {rng.choice(_NAMES)}, notaire à {rng.choice(_COMMUNES)},",
                f"ont comparu {seller}, ci-après le vendeur, et {buyer}, l'acquéreur.",
            ]
        lines.append("DÉSIGNATION" if page % 2 else "CONDITIONS")
        for _ in range(rng.randint(20, 30)):
            lines.append(
                f"Article {rng.randint(1, 40)} : l'immeuble sis à {rng.choice(_COMMUNES)}, "
                f"cadastré section {rng.choice('ABCDEFGH')} n° {rng.randint(1, 999)}, "
                f"pour une contenance de {rng.randint(10, 5000)} m²."
            )
        out.append("\n".join(lines))
    return out


def sample_document(document_source: str, seed: int, pages: int | None = None) -> SampleDocument:
    """A realistic index (1-2 pages) or acte (2-8 pages) document, deterministic in `seed`."""
    rng = random.Random(seed * 7919)
    if document_source == "index":
        texts = index_pages(seed, pages or rng.randint(1, 2))
    elif document_source == "acte":
        texts = acte_pages(seed, pages or rng.randint(2, 8))
    else:
        raise ValueError(f"unknown document_source {document_source!r}")
    return SampleDocument(document_source, f"{document_source}-{seed:05d}", texts, make_pdf(texts))
