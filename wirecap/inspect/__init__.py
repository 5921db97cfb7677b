"""Looking at captures: listings, exchange details, raw bytes. Imports wirecap.capture and wirecap.llm."""
