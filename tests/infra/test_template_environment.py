"""The templates set only LAMBDAPOOL_* variables the SDK reads (core settings, pooler options)."""

from __future__ import annotations

import re

from lambdapool import adapters
from lambdapool._config import SETTINGS, env_name
from tests.infra.infra_support import SAM_TEMPLATE, TERRAFORM


def test_every_lambdapool_variable_the_templates_set_is_a_setting_the_sdk_reads():
    known = {env_name(s.name) for s in SETTINGS}
    known |= {env_name(o.name) for name in adapters.BUILTIN for o in adapters.load(name).OPTIONS}
    for path in (SAM_TEMPLATE, TERRAFORM / "main.tf"):
        used = set(re.findall(r"\bLAMBDAPOOL_[A-Z_]+\b", path.read_text()))
        assert used >= {"LAMBDAPOOL_POOLER", "LAMBDAPOOL_PROXY_NAME", "LAMBDAPOOL_MAX_PER_INSTANCE"}
        assert used <= known, (path.name, sorted(used - known))
