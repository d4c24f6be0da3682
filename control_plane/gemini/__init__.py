"""Gemini OCR: prompts, token estimates, error classification and the engine.

Import the engine from `control_plane.gemini.engine`; the other modules are pure
and cheap to import.
"""
