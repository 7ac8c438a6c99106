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
