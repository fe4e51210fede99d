"""The client (biofleet_client) and the API's OpenAPI document agree: one client method per
operationId and the reverse, the same method and path, and the same field names in request
bodies and in responses (the job's result per kind included)."""

import inspect
import typing

import pytest
from pydantic import BaseModel

from biofleet_client import AsyncClient, Client
from biofleet_client._core import OPERATIONS
from biofleet_client.models import JOB_MODELS

# Routes the contract fixes that this server does not serve yet. Once it does, remove them here.
PENDING_ROUTES: set[str] = set()
# Fields the contract adds to every submit body (per-request face options) that this server does
# not take yet. Once it does, remove them here.
PENDING_FIELDS: set[str] = set()


@pytest.fixture(scope="module")
def spec() -> dict:
    from api.app import create_app

    return create_app().openapi()


def server_operations(spec: dict) -> dict[str, tuple[str, str, dict]]:
    return {
        operation["operationId"]: (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"].get(name) or schema.get("$defs", {})[name]
    return schema


def model_fields(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def nested_model(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    """The pydantic model a field holds (through Optional), if any."""
    annotation = model.model_fields[field].annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


def nested_schema(spec: dict, schema: dict) -> dict | None:
    """The object schema a property holds (through anyOf [..., null]), if any."""
    for option in [schema, *schema.get("anyOf", [])]:
        option = resolve(spec, option)
        if option.get("type") == "object" and "properties" in option:
            return option
    return None


def assert_same_fields(spec: dict, schema: dict, model: type[BaseModel], where: str) -> None:
    """Property names equal field names, and so for nested objects, one level down."""
    schema = resolve(spec, schema)
    assert set(schema["properties"]) == model_fields(model), where
    for name, prop in schema["properties"].items():
        inner_model, inner_schema = nested_model(model, name), nested_schema(spec, prop)
        if inner_model is not None and inner_schema is not None:
            assert set(inner_schema["properties"]) == model_fields(inner_model), f"{where}.{name}"


def success_schema(operation: dict) -> dict | None:
    for status, response in operation["responses"].items():
        if status.startswith("2"):
            content = response.get("content", {}).get("application/json")
            return content["schema"] if content else None
    return None


def test_every_operation_has_a_client_method_and_the_reverse(spec):
    server = server_operations(spec)
    assert PENDING_ROUTES.isdisjoint(server), "served now: remove from PENDING_ROUTES"
    assert set(OPERATIONS) == set(server) | PENDING_ROUTES
    for name in OPERATIONS:
        assert callable(getattr(Client, name, None)), f"Client.{name}"
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name, None)), f"AsyncClient.{name}"
    for name, (method, path, _) in server.items():
        assert (OPERATIONS[name].method, OPERATIONS[name].path) == (method, path), name


def test_request_bodies_have_the_same_fields(spec):
    for name, (_, _, operation) in server_operations(spec).items():
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        model = OPERATIONS[name].request
        assert (body is None) == (model is None), name
        if body is None:
            continue
        properties = set(resolve(spec, body["schema"])["properties"])
        assert PENDING_FIELDS.isdisjoint(properties), f"{name} takes them now: remove from PENDING_FIELDS"
        assert properties == model_fields(model) - PENDING_FIELDS, name
        assert "example" in body or "examples" in body, f"{name}: no request example"


def test_responses_have_the_same_fields(spec):
    for name, (_, _, operation) in server_operations(spec).items():
        schema = success_schema(operation)
        response = OPERATIONS[name].response
        if schema is None:
            assert response is None, name
            continue
        if "oneOf" in schema:  # a job: one schema per kind
            mapping = schema["discriminator"]["mapping"]
            assert schema["discriminator"]["propertyName"] == "kind"
            assert set(mapping) == set(JOB_MODELS), name
            for kind, ref in mapping.items():
                assert_same_fields(spec, {"$ref": ref}, JOB_MODELS[kind], f"{name}[{kind}]")
        else:
            assert_same_fields(spec, schema, response, name)


def test_the_job_result_is_discriminated_by_kind(spec):
    job = spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert job["schema"]["discriminator"]["propertyName"] == "kind"
    assert {"enroll", "verify", "identify", "failed"} <= set(job["examples"])
    results = {kind: resolve(spec, {"$ref": ref}) for kind, ref in job["schema"]["discriminator"]["mapping"].items()}
    assert results["verify"]["properties"]["kind"]["const"] == "verify"
    verify_result = nested_schema(spec, results["verify"]["properties"]["result"])
    assert verify_result is not None and "match" in verify_result["properties"]
