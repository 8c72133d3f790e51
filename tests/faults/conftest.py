"""Fixtures of the fault scenarios: a started :class:`~tests.faults.rig.Rig` in the test's nursery."""

from __future__ import annotations

import pytest
import trio

from .rig import Rig


@pytest.fixture
async def rig(nursery: trio.Nursery) -> Rig:
    return await Rig(nursery).start()
