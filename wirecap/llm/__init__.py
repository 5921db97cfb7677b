"""Sans-IO parsers for LLM wire formats (SSE, NDJSON, JSON) and provider adapters."""
