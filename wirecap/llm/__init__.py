"""Sans-IO parsers for LLM wire formats (SSE, NDJSON, JSON) and provider adapters.

Nothing here reads files or sockets: adapters take an :class:`ExchangeInput` (bytes and times) and
return :class:`LLMFacts`. This package imports no other wirecap package.
"""

from wirecap.llm.analyze import analyze, pick_adapter
from wirecap.llm.facts import (
    EventAllowance,
    ExchangeInput,
    LLMFacts,
    TimedChunks,
    ToolCall,
    Usage,
)
from wirecap.llm.http import DecodeError, Head, decode_content, parse_head
from wirecap.llm.ndjson import NDJSONParser
from wirecap.llm.sse import SSEEvent, SSEParser

__all__ = [
    "DecodeError",
    "EventAllowance",
    "ExchangeInput",
    "Head",
    "LLMFacts",
    "NDJSONParser",
    "SSEEvent",
    "SSEParser",
    "TimedChunks",
    "ToolCall",
    "Usage",
    "analyze",
    "decode_content",
    "parse_head",
    "pick_adapter",
]
