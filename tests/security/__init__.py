"""Reliability and security tests: fuzzed frames, UFO's advisory classes, TLS."""
