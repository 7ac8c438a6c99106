"""Schemathesis against the real app (a tiny model, 16 px): every operation, with inputs the
schema allows and inputs it does not, must answer without a server error, with a status code
the schema lists, and with headers and a body that conform to it."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from test_serving import engine_for

from fractalflow import FractalFlowPipeline
from fractalflow.serving import ServerConfig, create_app

EXAMPLES = 30  # per operation and mode; the whole run takes about a minute on 2 cores


def test_every_operation_conforms_to_its_schema(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    config = ServerConfig(max_size=32, max_steps=4, max_images=2, max_queue=4)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(config, engine_for(pipeline)))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    for operation, mode in [(op, mode) for op in operations for mode in GenerationMode]:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def conforms(case):
            case.call_and_validate()

        try:
            conforms()
        except Unsatisfiable:  # nothing can violate a schema of free strings or no inputs at all
            assert mode is GenerationMode.NEGATIVE, operation.label


def test_sequences_of_calls_along_the_schema_links_conform(tiny_model_folder):
    """Stateful: queue a job, then follow the links of its 202 (read it, follow its events,
    cancel it) in random orders; every response must conform, none may be a server error,
    and a link given the id of a queued job must lead to it (no 404)."""
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    config = ServerConfig(max_size=32, max_steps=4, max_images=2, max_queue=4)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(config, engine_for(pipeline)))
    calls: list[tuple[str, int, bool]] = []  # operation, status, whether it named a queued job
    queued: set[str] = set()

    class Recorded(schema.as_state_machine()):
        def after_call(self, response, case):
            if response.status_code == 202:
                queued.add(response.json()["id"])
            job = (case.path_parameters or {}).get("job_id")
            calls.append((case.operation.label, response.status_code, job in queued))

    rules = {name for name in dir(Recorded) if name.startswith("POST_v1_generate___202_")}
    assert all(any(f"_{link}__" in rule for rule in rules) for link in ("GetJob", "FollowJobEvents", "CancelJob"))
    Recorded.run(
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )
    # schemathesis also sends made-up ids along a link (those get 404); the real ones must lead to the job
    followed = {(label, status) for label, status, real in calls if real}
    assert ("GET /v1/jobs/{job_id}", 200) in followed and ("GET /v1/jobs/{job_id}/events", 200) in followed
    assert any(label == "DELETE /v1/jobs/{job_id}" and status in (200, 409) for label, status in followed)
    assert all(status != 404 for _, status in followed), followed
