"""Other tools' formats in and out: imports of HAR files, VCR cassettes and mitmproxy flows into
captures (:mod:`~wirecap.interop.imports`), exports of captures as HAR, JSON Lines, VCR cassettes
and curl scripts. Imports only :mod:`wirecap.capture` and :mod:`wirecap.llm`."""
