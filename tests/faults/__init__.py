"""Fault injection: a misbehaving-network proxy and the scenarios built on it."""
