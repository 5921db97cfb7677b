"""wirecap: capture LLM API traffic at the wire, byte for byte, and replay it."""

__version__ = "0.1.0"
