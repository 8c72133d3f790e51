"""Tests of the device agent (galaxy_trio.agent) against scripted fake servers."""
