"""schemathesis against the todo service: real uvicorn, a throwaway PostgreSQL database, 0 failures.

Runs schemathesis' engine in-process (the phases and checks its CLI runs: examples, coverage,
fuzzing and stateful, every check), with a fixed seed and a bounded number of examples so the
run is repeatable and stays well under a minute.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema

from tests import servers

pytestmark = pytest.mark.postgresql

SEED = 1
MAX_EXAMPLES = 10


@dataclass
class Run:
    """What one schemathesis run did."""

    cases: collections.Counter[str] = field(default_factory=collections.Counter)
    checks: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_reason: str = ""


@pytest.fixture
def todo_service(postgres_database_url: str) -> Iterator[str]:
    port = servers.free_port()
    process = servers.start_todo_service(postgres_database_url, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        servers.stop_todo_service(process)


def run_schemathesis(base_url: str) -> Run:
    config = SchemathesisConfig.from_dict(
        {"seed": SEED, "generation": {"max-examples": MAX_EXAMPLES}}
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    run = Run()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            run.cases[str(event.phase.value)] += len(recorder.cases)
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    run.checks.add(check.name)
                    if check.failure_info is not None:
                        request = recorder.interactions[case_id].request
                        run.failures.append(
                            f"{check.name} in {recorder.label} ({request.method} {request.uri}): "
                            f"{check.failure_info.failure}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            run.errors.append(repr(event))
        elif isinstance(event, events.EngineFinished):
            run.stop_reason = str(event.stop_reason.value)
    return run


def test_todo_service_passes_schemathesis(todo_service: str) -> None:
    """Every phase and every check over the whole OpenAPI schema: no failure, no error."""
    run = run_schemathesis(todo_service)
    print(f"schemathesis seed={SEED} max-examples={MAX_EXAMPLES}: {dict(run.cases)} cases")
    assert run.stop_reason == "completed"
    assert run.errors == []
    assert run.failures == [], "\n\n".join(run.failures)
    # It did run, broadly: each phase generated cases and the key checks were applied.
    assert run.cases["coverage"] > 100
    assert run.cases["fuzzing"] > 30
    assert run.cases["stateful"] > 20
    assert {
        "not_a_server_error",
        "status_code_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_acceptance",
        "ensure_resource_availability",
        "use_after_free",
    } <= run.checks
