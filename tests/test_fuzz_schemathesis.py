"""API fuzzing from the OpenAPI schema (schemathesis) against a live server on 127.0.0.1: zero 5xx.

Every operation of the schema gets up to ``RESCOM_FUZZ_EXAMPLES`` generated requests (default 50), valid and
invalid ones (wrong types, missing or extra fields, odd strings, random bodies for every declared media type).
Every response is checked with schemathesis' ``not_a_server_error`` (no 5xx) and for leaks (no traceback, source
file or server path in the body). The number of cases is printed at the end and recorded as the JUnit property
``fuzz_cases``. Skipped when schemathesis is not installed (``pip install schemathesis``).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402 (hypothesis comes with schemathesis)
from reliability_helpers import leaks, model_repository  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from rescom_dev.servers import (  # noqa: E402
    local_settings,  # noqa: E402
    running_server,
)
from service.main import create_app  # noqa: E402

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("RESCOM_FUZZ_EXAMPLES", "50"))
SCHEMA = schemathesis.openapi.from_dict(create_app().openapi())  # the schema the server publishes
CASES: Counter[str] = Counter()  # operation -> cases run
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    repo, name = model_repository(tmp_path_factory.mktemp("models"))
    s = local_settings(repo, max_body_bytes=1 << 20, log_level="error")
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield {"url": url, "client": client, "name": name}
        total = sum(CASES.values())
        summary = (
            f"schemathesis {schemathesis.SCHEMATHESIS_VERSION}: {total} cases over {len(CASES)} operations "
            f"(up to {EXAMPLES} each), responses by status: {dict(sorted(STATUSES.items()))}"
        )
        # Shown even without -s: suspend pytest's output capture for this one line.
        capture = request.config.pluginmanager.getplugin("capturemanager")
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
                reporter.write_line(f"\n[fuzz] {summary}")
        # Still healthy after the whole run.
        assert client.get("/health/ready").status_code == 200


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_server_errors(case, live):
    response = case.call(base_url=live["url"], timeout=30)
    CASES[case.operation.label] += 1  # per schema operation (probes of other methods included)
    STATUSES[response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error])
    assert not leaks(response.text), (case.method, case.formatted_path, response.text[:300])


def test_fuzzing_ran_cases(live, record_testsuite_property):
    """After the fuzz tests (pytest runs this module's tests in order): cases really ran, none got a 5xx."""
    total = sum(CASES.values())
    record_testsuite_property("fuzz_cases", total)
    if not CASES:
        pytest.skip("run together with test_no_server_errors")
    assert total >= 10 * len(CASES), CASES
    assert not [s for s in STATUSES if s >= 500], STATUSES
