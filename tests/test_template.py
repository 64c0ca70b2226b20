"""The template launcher behind spawn and forkserver on Linux."""

from __future__ import annotations

import os

import pytest
from conftest import assert_slots_conserved
from jobserver import Jobserver, _template

pytestmark = pytest.mark.skipif(
    not _template.available(), reason="the template launcher is Linux-only"
)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_template_forks_the_workers_and_closes_with_the_resource_set(
    method: str,
) -> None:
    with Jobserver(method, slots=2) as js:
        assert isinstance(js._resources.launcher, _template.TemplateLauncher)
        parents = {f.result() for f in [js.submit(os.getppid) for _ in range(4)]}
        client = js._resources.launcher._client
        assert client is not None and not client.dead
        assert_slots_conserved(js, 2)
    # One template forked them all; it is not this process.
    assert len(parents) == 1
    assert os.getpid() not in parents
    assert client.dead
