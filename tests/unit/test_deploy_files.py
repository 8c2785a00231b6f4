"""The production deployment's files (docker/) hold together without building or running anything: the
compose file validates against the compose specification's JSON schema, third-party images are pinned
by tag and digest, every variable it reads is listed for the operator's .env with no secret in the
repository, every FINEGRAIN_* variable set anywhere in docker/ is a documented setting, every image's
commands exist, and Prometheus and the Grafana dashboard name only metrics the code exports (read from
the metric definitions in serving/ and spark_jobs/, not from a list kept here)."""

from __future__ import annotations

import ast
import importlib.resources
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from finegrain.settings import PROJECT_ROOT, Settings

DOCKER = PROJECT_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
IMAGES = ("api", "spark", "sidecar", "airflow")
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")
DIGEST_VARIABLE = re.compile(
    r"^(?P<repo>[a-z0-9./-]+):(?P<tag>[\w.-]+)@\$\{(?P<var>[A-Z_]+_DIGEST):\?[^}]+\}$")
LITERAL_DIGEST = re.compile(r"^(?P<repo>[a-z0-9./-]+):(?P<tag>[\w.-]+)@sha256:[0-9a-f]{64}$")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def interpolated(text: str, values: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` against `values` (an unset one is an error)."""
    def one(match: re.Match[str]) -> str:
        whole, name = match.group(0), match.group(1)
        if name in values:
            return values[name]
        if ":-" in whole:
            return whole.split(":-", 1)[1][:-1]
        raise AssertionError(f"{whole} has no value and no default")
    return VARIABLE.sub(one, text)


def env_example() -> dict[str, str]:
    """Every variable docker/env.example lists (commented optional ones too) with its value."""
    names = {}
    for line in (DOCKER / "env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            names[match.group(1)] = match.group(2)
    return names


def filled_env() -> dict[str, str]:
    """Values of the right shape for every variable of env.example, to interpolate the file."""
    values = {name: value or "x" for name, value in env_example().items()}
    values.update({name: "sha256:" + "0" * 64 for name in values if name.endswith("_DIGEST")})
    values.update(IMAGE_TAG="0.1.0-test", KAFKA_PARTITIONS="2")
    return values


def compose_schema() -> dict[str, Any]:
    # The compose specification's schema as check-jsonschema ships it (vendored from compose-spec).
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    for document in (compose(), yaml.safe_load(interpolated(COMPOSE.read_text(), filled_env()))):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(document)]
        assert not errors, errors
    services = set(compose()["services"])
    assert {"mongo", "redis", "zookeeper", "kafka", "spark-master", "spark-worker", "postgres",
            "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "tfserving", "api", "sidecar",
            "prometheus", "grafana"} <= services


def test_a_broken_compose_file_is_caught_by_the_schema() -> None:
    schema = compose_schema()
    broken = compose()
    broken["services"]["api"]["depends_on"] = {"mongo": {"condition": "when_it_feels_like_it"}}
    broken["services"]["redis"]["restart_policy"] = "always"  # not a service key
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert len(list(validator.iter_errors(broken))) >= 2


def test_third_party_images_are_pinned_by_tag_and_digest() -> None:
    listed = env_example()
    for name, service in compose()["services"].items():
        image = service["image"]
        if image.startswith("localhost/finegrain-"):
            assert image.split(":", 1)[1].startswith("${IMAGE_TAG:?"), (name, image)
            continue
        match = DIGEST_VARIABLE.match(image) or LITERAL_DIGEST.match(image)
        assert match, f"{name}: {image} is not <image>:<tag>@<digest or ${{NAME_DIGEST:?...}}>"
        assert match.group("tag") != "latest" and re.search(r"\d", match.group("tag")), (name, image)
        if "var" in match.groupdict() and match.group("var"):
            assert listed.get(match.group("var"), None) == "", f"{match.group('var')} must be listed, empty"


def test_the_tf_serving_image_follows_the_locked_tensorflow() -> None:
    lock = (PROJECT_ROOT / "requirements" / "lock.txt").read_text()
    locked = re.search(r"^tensorflow-cpu==(\S+)", lock, re.M)
    assert locked is not None
    tag = compose()["services"]["tfserving"]["image"].split("@")[0].split(":")[1]
    assert tag.split(".")[:2] == locked.group(1).split(".")[:2], (tag, locked.group(1))


def test_every_variable_comes_from_the_env_file_with_no_secret_in_the_repository() -> None:
    listed = env_example()
    used = set(VARIABLE.findall(COMPOSE.read_text()))
    assert used <= set(listed), f"not in docker/env.example: {sorted(used - set(listed))}"
    required = {m.group(1) for m in re.finditer(r"\$\{([A-Z_0-9]+):\?", COMPOSE.read_text())}
    # Every required variable (the secrets, the digests, the tag) is empty in the example.
    assert all(listed[name] == "" for name in required), {n: listed[n] for n in required if listed[n]}
    for secret in ("FINEGRAIN_API_KEY", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY",
                   "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert secret in required, f"{secret} must be required from .env, never defaulted"
    # No literal password or key in the compose file itself.
    for service in compose()["services"].values():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|FERNET|API_KEY", key):
                assert VARIABLE.fullmatch(str(value)), f"{key} must come from .env, not {value!r}"


def documented_settings() -> set[str]:
    """FINEGRAIN_* variables the README's settings table and the DAGs' deployment settings document."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings"):readme.index("## The command line")]
    names = set(re.findall(r"`(FINEGRAIN_[A-Z_]+)`", table))
    # `..._WORKER_UI_PORT` style abbreviations in the table name the previous row's prefix.
    for full, short in re.findall(r"`(FINEGRAIN_[A-Z_]+)`, `\.\.\._([A-Z_]+)`", table):
        names.add(full.rsplit("_", len(short.split("_")))[0] + "_" + short)
        names.add(full.rsplit("_", 2)[0] + "_" + short)
    dags = (PROJECT_ROOT / "dags" / "finegrain_deployment.py").read_text()
    deployment = dags[:dags.index('"""', 3)]
    return names | set(re.findall(r"`(FINEGRAIN_[A-Z_]+)`", deployment))


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = documented_settings()
    fields = {f"FINEGRAIN_{name.upper()}" for name in Settings.model_fields}
    assert fields <= documented, f"settings missing from the README's table: {sorted(fields - documented)}"


def containerfile_env(image: str) -> dict[str, str]:
    text = (DOCKER / image / "Containerfile").read_text().replace("\\\n", " ")
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def test_every_finegrain_variable_set_in_docker_is_a_documented_setting() -> None:
    documented = documented_settings()
    fields = {f"FINEGRAIN_{name.upper()}" for name in Settings.model_fields}
    set_here = {name for image in IMAGES for name in containerfile_env(image)
                if name.startswith("FINEGRAIN_")}
    for service in compose()["services"].values():
        set_here |= {name for name in service.get("environment", {}) if name.startswith("FINEGRAIN_")}
    assert set_here, "no FINEGRAIN_* variable found: the parsing is broken"
    assert set_here <= documented, f"undocumented: {sorted(set_here - documented)}"
    # And each Settings field set here parses as the settings do (a bad value would fail at start).
    values = {name: interpolated(str(value), filled_env()) for service in compose()["services"].values()
              for name, value in service.get("environment", {}).items() if name in fields}
    Settings(**{name.removeprefix("FINEGRAIN_").lower(): value for name, value in values.items()
                if name not in ("FINEGRAIN_API_BIND", "FINEGRAIN_API_METRICS_BIND")})


def instructions(image: str) -> list[tuple[str, str]]:
    text = (DOCKER / image / "Containerfile").read_text().replace("\\\n", " ")
    return [(line.split(" ", 1)[0], line.split(" ", 1)[1].strip()) for line in text.splitlines()
            if line and not line.startswith("#") and line.split(" ", 1)[0].isupper()]


def exec_form(text: str) -> list[str]:
    words: list[str] = json.loads(text)
    return words


def check_command(words: list[str], image: str) -> None:
    """The programs and project files a command names exist (in the repository, or in the installed
    packages the image installs from the same lock)."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    for word in words:
        if word.startswith("/opt/finegrain/"):
            assert (PROJECT_ROOT / word.removeprefix("/opt/finegrain/")).is_file(), (image, word)
        elif word.startswith("/opt/venv/lib/python3.11/site-packages/pyspark/"):
            assert (spark_home / word.split("/pyspark/", 1)[1]).is_file(), (image, word)
    if words[:2] == ["python", "-m"]:
        module = PROJECT_ROOT / Path(*words[2].split("."))
        assert module.with_suffix(".py").is_file() or (module / "__main__.py").is_file(), (image, words)
    if words and words[0] == "gunicorn":
        app = words[-1].split(":")[0]
        assert (PROJECT_ROOT / Path(*app.split("."))).with_suffix(".py").is_file(), (image, words)


@pytest.mark.parametrize("image", IMAGES)
def test_every_image_is_non_root_with_a_health_check_and_an_existing_entrypoint(image: str) -> None:
    steps = instructions(image)
    kinds = [kind for kind, _ in steps]
    assert kinds[:2] == ["ARG", "FROM"], image  # built on the BASE docker/build passes
    assert "HEALTHCHECK" in kinds, image
    users = [value for kind, value in steps if kind == "USER"]
    if image != "sidecar":  # the sidecar inherits the Spark image's user
        assert users and users[-1].split(":")[0] not in ("0", "root"), image
    for kind, value in steps:
        if kind in ("ENTRYPOINT", "CMD"):
            check_command(exec_form(value), image)
        elif kind == "HEALTHCHECK":
            check_command(exec_form(value.split(" CMD ", 1)[1]), image)
        elif kind == "COPY" and not value.startswith("--"):
            for source in value.split()[:-1]:
                assert (PROJECT_ROOT / source).exists(), (image, source)
    requirements = DOCKER / image / "requirements.in"
    if requirements.exists():
        locked = {line.split("==")[0].lower() for line in (PROJECT_ROOT / "requirements" / "lock.txt")
                  .read_text().splitlines() if "==" in line}
        names = [line.strip().lower() for line in requirements.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        assert names and set(names) <= locked, f"{image}: not pinned by the lock: {set(names) - locked}"


def test_the_compose_commands_name_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        command = service.get("command")
        if isinstance(command, list) and service["image"].startswith("localhost/finegrain-"):
            check_command([str(word) for word in command], name)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), (name, volume)


# ---------------------------------------------------------------------------------------------------
# Metrics: what the code defines, what Prometheus and Grafana read.

METRIC_SOURCES = ("serving", "spark_jobs")
EXPOSED_SUFFIXES = {"Counter": ("_total", "_created"), "Gauge": ("",),
                    "Histogram": ("_bucket", "_sum", "_count", "_created"),
                    "Summary": ("", "_sum", "_count", "_created")}


def exported_metrics() -> dict[str, str]:
    """Every series name the code's prometheus_client metrics expose, to the kind that defines it: read
    from the `Counter("name", ...)`-style definitions of serving/ and spark_jobs/."""
    exported: dict[str, str] = {}
    for package in METRIC_SOURCES:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in EXPOSED_SUFFIXES and node.args
                        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    name = node.args[0].value
                    base = name.removesuffix("_total") if node.func.id == "Counter" else name
                    for suffix in EXPOSED_SUFFIXES[node.func.id]:
                        exported[base + suffix] = node.func.id
    return exported


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset"}


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are no function call, keyword,
    grouping label, label matcher, range or number."""
    text = re.sub(r"\{[^}]*\}", "", expression)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()[:1]
        if match.group(0) not in PROMQL_WORDS and following != "(":
            names.add(match.group(0))
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "finegrain.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_metric_definitions_are_found() -> None:
    exported = exported_metrics()
    # The parse sees both processes' metrics: the API's histograms and the sidecar's gauges.
    assert any(name.startswith("finegrain_stream_") for name in exported)
    assert any(name.endswith("_bucket") for name in exported)


def test_the_dashboard_names_only_exported_metrics_and_covers_the_issue_panels() -> None:
    exported = exported_metrics()
    expressions = dashboard_expressions()
    used = set().union(*(metric_names(e) for e in expressions))
    assert used <= set(exported), f"not exported by the code: {sorted(used - set(exported))}"
    families = {name.rsplit("_", 1)[0] if exported[name] != "Gauge" else name for name in used}
    for wanted in ("finegrain_requests", "finegrain_stage_seconds", "finegrain_channel_candidates",
                   "finegrain_degraded_responses", "finegrain_rule_atom_requests", "finegrain_model_info",
                   "finegrain_stream_lag_records", "finegrain_stream_freshness_seconds"):
        assert wanted in families, f"no panel reads {wanted}"


def test_the_promql_parse_catches_a_metric_the_code_does_not_export() -> None:
    names = metric_names('sum by (le, stage) (rate(finegrain_stage_latency_bucket{stage="rank"}[5m]))')
    assert names == {"finegrain_stage_latency_bucket"}
    assert not names <= set(exported_metrics())


def test_prometheus_scrapes_the_api_and_the_sidecar_where_compose_binds_them() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]}
    services = compose()["services"]
    api_port = services["api"]["environment"]["FINEGRAIN_API_METRICS_BIND"].rsplit(":", 1)[1]
    sidecar_port = services["sidecar"]["environment"]["FINEGRAIN_STREAM_METRICS_BIND"].rsplit(":", 1)[1]
    assert targets == {"finegrain-api": f"api:{api_port}", "finegrain-sidecar": f"sidecar:{sidecar_port}"}
    for rule_file in config.get("rule_files", []):  # recording rules, if any, read exported names too
        for group in yaml.safe_load((DOCKER / "prometheus" / rule_file).read_text())["groups"]:
            for rule in group["rules"]:
                assert metric_names(rule["expr"]) <= set(exported_metrics()), rule
