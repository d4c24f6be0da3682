"""Regenerate the real-world PDF corpus in this folder (issue 12). Run once, by hand:

    apt-get install --no-install-recommends libreoffice-writer-nogui texlive-latex-base \
        imagemagick ghostscript
    .venv/bin/pip install reportlab fpdf2 img2pdf pikepdf
    .venv/bin/python tests/data/pdfs/make_corpus.py

The PDFs are committed, so CI needs none of these tools. README.md in this folder says
how each file was made and what the pool must do with it (tests/e2e/test_pdf_corpus.py).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ACTE = [
    "ACTE DE VENTE",
    "Par-devant Maître Hélène Lefèvre, notaire à Trois-Rivières,",
    "ont comparu Jean-Baptiste Côté et Marie-Ève Gagnon, lesquels vendent",
    "le lot 2 345 678 du cadastre du Québec, circonscription foncière de Champlain,",
    "pour le prix de cent vingt-cinq mille dollars (125 000 $).",
]
INDEX_ROWS = [
    ("1987-03-12", "Vente", "Côté J.-B.", "Gagnon M.-È.", "412 556"),
    ("1991-07-02", "Hypothèque", "Gagnon M.-È.", "Banque Laurentienne", "498 001"),
    ("2004-11-23", "Quittance", "Banque Laurentienne", "Gagnon M.-È.", "1 102 334"),
]


def run(*cmd: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=env, timeout=300)


def libreoffice(tmp: Path) -> None:
    html = "<html><body><h1>{}</h1>{}</body></html>".format(
        ACTE[0], "".join(f"<p>{line}</p>" for line in ACTE[1:] * 3)
    )
    (tmp / "acte.html").write_text(html, encoding="utf-8")
    run("soffice", "--headless", "--convert-to", "pdf:writer_pdf_Export", "acte.html", cwd=tmp)
    shutil.copy(tmp / "acte.pdf", HERE / "libreoffice_writer.pdf")


def pdflatex(tmp: Path) -> None:
    body = "\n\n".join(ACTE[1:] * 2).replace("$", "\\$")
    tex = (
        "\\documentclass[11pt]{article}\\usepackage[T1]{fontenc}\\usepackage[utf8]{inputenc}"
        f"\\begin{{document}}\\section*{{{ACTE[0]}}}{body}\\newpage Page 2: {body}"
        "\\end{document}"
    )
    (tmp / "acte.tex").write_text(tex, encoding="utf-8")
    run("pdflatex", "-interaction=nonstopmode", "acte.tex", cwd=tmp)
    shutil.copy(tmp / "acte.pdf", HERE / "pdflatex.pdf")


def imagemagick_scans(tmp: Path) -> None:
    """'Scans' rendered by ImageMagick (grey, rotated, noisy JPEG; bilevel CCITT G4 TIFF as
    office scanners make), wrapped in PDF by img2pdf: Debian's ImageMagick policy forbids
    its own PDF writer."""
    import img2pdf

    text = "\\n".join(ACTE)
    run(
        "/usr/bin/convert",
        "-size",
        "850x500",
        "xc:white",
        "-font",
        "DejaVu-Serif",
        "-pointsize",
        "18",
        "-annotate",
        "+40+60",
        text,
        "-rotate",
        "1.5",
        "-attenuate",
        "0.4",
        "+noise",
        "Gaussian",
        "-colorspace",
        "Gray",
        "-quality",
        "40",
        "-density",
        "100",
        "-units",
        "PixelsPerInch",
        "scan.jpg",
        cwd=tmp,
    )
    run(
        "/usr/bin/convert",
        "-size",
        "1700x1000",
        "xc:white",
        "-font",
        "DejaVu-Sans",
        "-pointsize",
        "30",
        "-annotate",
        "+60+90",
        text,
        "-rotate",
        "-0.7",
        "+repage",
        "-threshold",
        "60%",
        "-monochrome",
        "-compress",
        "Group4",
        "-density",
        "200",
        "-units",
        "PixelsPerInch",
        "scan.tif",
        cwd=tmp,
    )
    (HERE / "imagemagick_scan_jpeg.pdf").write_bytes(img2pdf.convert(str(tmp / "scan.jpg")))
    (HERE / "scan_ccitt_g4.pdf").write_bytes(img2pdf.convert(str(tmp / "scan.tif")))


def ghostscript(tmp: Path) -> None:
    lines = " ".join(
        f"72 {720 - 20 * i} moveto ({line.encode('ascii', 'replace').decode()}) show"
        for i, line in enumerate(ACTE)
    )
    (tmp / "acte.ps").write_text(
        f"%!PS\n/Times-Roman findfont 12 scalefont setfont\n{lines}\nshowpage\n"
    )
    run("ps2pdf", "acte.ps", "acte_gs.pdf", cwd=tmp)
    shutil.copy(tmp / "acte_gs.pdf", HERE / "ghostscript_ps2pdf.pdf")


def reportlab_index() -> None:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    c = canvas.Canvas(out, pagesize=letter)
    for page in (1, 2):
        c.setFont("Helvetica-Bold", 14)
        c.drawString(50, 750, f"Index aux immeubles - lot 2 345 678 - page {page}")
        c.setFont("Helvetica", 10)
        for i, row in enumerate(INDEX_ROWS):
            for j, cell in enumerate(row):
                c.drawString(50 + j * 110, 710 - i * 20, cell)
        c.showPage()
    c.save()
    (HERE / "reportlab_index.pdf").write_bytes(out.getvalue())


def fpdf2_index() -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=10)
    for row in INDEX_ROWS:
        for cell in row:
            pdf.cell(38, 8, cell.encode("latin-1", "replace").decode("latin-1"), border=1)
        pdf.ln()
    (HERE / "fpdf2_index.pdf").write_bytes(bytes(pdf.output()))


def pikepdf_object_streams() -> None:
    """PDF 1.5+ cross-reference and object streams, linearized (qpdf's writer)."""
    import pikepdf

    with pikepdf.open(HERE / "reportlab_index.pdf") as pdf:
        pdf.save(
            HERE / "qpdf_objstreams_linearized.pdf",
            object_stream_mode=pikepdf.ObjectStreamMode.generate,
            linearize=True,
        )


def encrypted() -> None:
    from pypdf import PdfReader, PdfWriter

    for name, user in (("encrypted_user_password.pdf", "s3cret"), ("encrypted_owner_only.pdf", "")):
        writer = PdfWriter()
        for page in PdfReader(HERE / "fpdf2_index.pdf").pages:
            writer.add_page(page)
        owner = "owner-pw"  # a fixture password, not a secret
        writer.encrypt(user_password=user, owner_password=owner, algorithm="AES-128")
        with open(HERE / name, "wb") as handle:
            writer.write(handle)


def broken_xref() -> None:
    """A damaged cross-reference offset, as left by buggy producers: readers repair it."""
    data = (HERE / "reportlab_index.pdf").read_bytes()
    head, _, tail = data.rpartition(b"startxref")
    offset = tail.split()[0]
    damaged = head + b"startxref" + tail.replace(offset, str(int(offset) + 7).encode(), 1)
    (HERE / "damaged_xref.pdf").write_bytes(damaged)


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        libreoffice(tmp)
        pdflatex(tmp)
        imagemagick_scans(tmp)
        ghostscript(tmp)
    reportlab_index()
    fpdf2_index()
    pikepdf_object_streams()
    encrypted()
    broken_xref()
    for path in sorted(HERE.glob("*.pdf")):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
