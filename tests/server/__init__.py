"""Tests of the AIP server (galaxy_trio.server)."""
