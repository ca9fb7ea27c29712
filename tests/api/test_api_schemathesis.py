"""Property-based: schemathesis generates valid and invalid requests from the SERVED OpenAPI spec; none may get a 5xx."""

from __future__ import annotations

import pytest

from tests.api.conftest import PROFILE

EXAMPLES = {"positive": 6, "negative": 4}  # per operation; the test budget is small and the machine shared
# A valid personalize request calibrates noise (seconds) before the gate refuses it; chats generate.
SLOW = {"POST /v1/personalize": {"positive": 1, "negative": 3}, "POST /v1/chat/completions": {"positive": 4, "negative": 3}}


def test_no_server_error_on_generated_requests(live_api):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from privacy.budget import BudgetPolicy, ReleaseGate

    url, token, assistant = live_api
    with assistant._vault_lock:  # generated personalize requests stay cheap: DP ones hit the cap at the gate
        ReleaseGate(assistant.vault.db, signer=assistant.vault.signing_key()).set_policy(PROFILE, "record", BudgetPolicy(epsilon_cap=0.01, delta=1e-5))
    root, auth = url[: -len("/v1")], {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{root}/openapi.json", headers=auth)
    statuses: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9
    for op in operations:
        for mode in schemathesis.GenerationMode:
            examples = SLOW.get(op.label, EXAMPLES)[mode.value]

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case) -> None:
                r = case.call(base_url=root, headers=auth, timeout=120)
                statuses.setdefault(op.label, set()).add(r.status_code)
                assert r.status_code < 500, f"{case.method} {case.formatted_path} → {r.status_code}: {r.text[:300]}"

            run()
    assert set(statuses) == {op.label for op in operations}
    assert any(422 in codes for codes in statuses.values())  # the invalid requests did reach validation
    assert any(200 in codes for codes in statuses.values())
    job = assistant._active
    if job is not None:
        job.cancel()
        job._done.wait(120)


@pytest.mark.parametrize("mode", ["bearer"])
def test_spec_declares_bearer_security_everywhere(mode):
    from personal.server import openapi_spec

    spec = openapi_spec()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("security") == [{"HTTPBearer": []}], (method, path)
