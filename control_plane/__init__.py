"""The control plane of the OCR pool: configuration, Redis-Lua limiter, slots,
capacity, allocation, the document queue and the Gemini OCR engine."""
