"""Replay of captured requests and the mock backend that serves captures."""
