"""Test support: service fixtures, private servers, generated PDFs."""
