"""A Gemini-compatible HTTP emulator for tests, benchmarks and the demo.

`python -m control_plane.emulator --port 8090` (or `ocr-gemini-emulator`). It answers
generateContent with the PDF's text layer and realistic usageMetadata, enforces its
own RPM / input-TPM sliding windows with Google's real 429 body, injects faults, and
reports what it saw on GET /_emulator/stats.
"""
