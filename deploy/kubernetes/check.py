"""Checks what `kubectl kustomize` renders for each kustomization (run by scripts/k8s-check).

    python check.py --kubectl K --envoy E --router R --simulator S --module-dir M
                    [--k8s-version V]... [--self-contained DIR]... DIR...

For every DIR (a kustomization, relative to deploy/kubernetes/):
  1. `kubectl kustomize DIR` renders;
  2. every object validates, strictly (unknown fields are errors), against the Kubernetes JSON
     schemas of each --k8s-version (kubernetes-validate);
  3. the Envoy config inside the rendered ConfigMap passes `envoy --mode validate`, started with the
     very flags the rendered Deployment gives Envoy;
  4. the routing config inside the rendered ConfigMap passes `responses-router validate`, with the
     environment the Deployment gives the router (RESPONSES_ROUTER__* overrides, e.g. the Redis
     URL), and every flag the Deployments give the router (`serve`) and the simulator image
     (`responses-router-simulator`) is one that binary has;
  5. the objects fit together: what the schemas cannot see. Every pod runs under the restricted
     Pod Security Standard with requests, limits and probes on every container, and mounts every
     volume it declares; ConfigMap volumes, Service selectors and ports, the HPA's target and the
     PDB's selector all point at something rendered; Envoy's container ports and probes are
     listeners of its config; every cluster the routing config names is one of Envoy's
     model-server clusters, and a `pin_host` cluster whose Service is in the output is headless;
     the container holding the affinity store requests the memory `affinity.capacity` needs
     (about 104 bytes per id).

The router's form is read from each gateway's Envoy config:
  - the ext_proc sidecar (base, dev, production): the router serves ext_proc only on the Unix
    socket Envoy's router cluster names, in an emptyDir volume both containers mount, and
    kubelet's gRPC probes go to its health-only port;
  - the router inside Envoy (a dynamic-module filter: overlays/module): no router container, no
    ext_proc filter, no router cluster and no socket mount in the pod; Envoy runs the module
    image; the filter's `routing_yaml` is a file of a ConfigMap mounted into Envoy, and steps 3
    and 4 run on that file with Envoy's environment, step 3 loading the real module from
    --module-dir (in-image paths, the routing file's and the embedding model's, mapped to this
    machine's copies); and the Dockerfile's module stage (never built here) puts the module on
    ENVOY_DYNAMIC_MODULES_SEARCH_PATH and the model where Envoy's environment names it, on the
    Envoy release the sidecar gateway runs, whose minor version (the module's ABI is built for
    one) is that of the Envoy these checks run.

Needs PyYAML and kubernetes-validate (both in the project's .venv). Prints one line per
kustomization, or every problem found, and exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

from render import ROUTER_CLUSTER, ROUTER_SOCKET  # deploy/kubernetes/render.py

HERE = Path(__file__).resolve().parent
ENVOY_CONTAINER = "envoy"
ROUTER_CONTAINER = "router"
ROUTER_IMAGE = "responses-router"
SIMULATOR_IMAGE = "responses-router-simulator"
# The router inside Envoy: Envoy's image with the module (the Dockerfile's MODULE_STAGE), the
# filter that loads it, and the module's name (Envoy loads lib<name>.so from
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
MODULE_IMAGE = "responses-router-envoy"
MODULE_STAGE = "envoy-module"
MODULE_NAME = "responses_router_envoy"
MODULE_FILTER = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
EXT_PROC_FILTER = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
UPSTREAM_ENVOY_IMAGE = "envoyproxy/envoy"
DOCKERFILE = HERE.parents[1] / "Dockerfile"
# The affinity store's resident memory per id (README.md, "The store": measured at 1 million ids),
# and `affinity.capacity` when the routing config leaves it out (crates/core's default).
STORE_BYTES_PER_ID = 104
DEFAULT_CAPACITY = 1_000_000


def image_name(container: dict) -> str:
    """The image's name without registry path and tag (`registry/x/name:tag` -> `name`)."""
    return container.get("image", "").rsplit("/", 1)[-1].split(":")[0].split("@")[0]


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


# The router image carries the embedding models under IMAGE_MODELS (Dockerfile, stage `models`);
# this machine has the same files in .cache/models (scripts/models), where the check reads them.
IMAGE_MODELS = "/usr/share/responses-router/models/"
LOCAL_MODELS = HERE.parents[1] / ".cache" / "models"


def container_env(container: dict) -> dict[str, str]:
    """This process's environment without RESPONSES_ROUTER_* variables, plus the container's
    literal `env` values (those from Secrets or fields cannot be known here), with model paths
    inside the image mapped to this machine's copies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPONSES_ROUTER")}
    env.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return {k: str(LOCAL_MODELS / v[len(IMAGE_MODELS):]) if v.startswith(IMAGE_MODELS) else v
            for k, v in env.items()}


def indent(result: subprocess.CompletedProcess[str], last: int = 30) -> str:
    """A command's output (its last lines), indented under the problem it belongs to."""
    lines = (result.stdout + result.stderr).strip().splitlines()[-last:]
    return "\n".join(f"      {line}" for line in lines)


def kind_name(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_templates(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod template) for every object that has one."""
    return [
        (o, o["spec"]["template"])
        for o in objects
        if o.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
    ]


def all_containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def container_port_names(templates: list[dict]) -> set[str]:
    return {port.get("name") for t in templates for c in all_containers(t["spec"]) for port in c.get("ports", [])}


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def validate_schemas(objects: list[dict], versions: list[str], p: Problems) -> None:
    for obj in objects:
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(x) for x in e.path)
                p.add(f"{kind_name(obj)}: not valid for Kubernetes {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                p.add(f"{kind_name(obj)}: no Kubernetes {version} schema: {e.message}")


def check_pod_security(objects: list[dict], p: Problems) -> None:
    """The restricted Pod Security Standard, plus what the issue asks of every container."""
    for workload, template in pod_templates(objects):
        spec = template["spec"]
        where = kind_name(workload)
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            p.add(f"{where}: pod securityContext.runAsNonRoot is not true")
        if psc.get("runAsUser") == 0:
            p.add(f"{where}: pod runs as uid 0")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            p.add(f"{where}: pod seccompProfile is not RuntimeDefault")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                p.add(f"{where}: {key} is set")
        for volume in spec.get("volumes", []):
            if "hostPath" in volume:
                p.add(f"{where}: volume {volume['name']} is a hostPath")
        for c in all_containers(spec):
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                p.add(f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                p.add(f"{cw}: readOnlyRootFilesystem is not true")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                p.add(f"{cw}: capabilities.drop is not [ALL]")
            if sc.get("capabilities", {}).get("add"):
                p.add(f"{cw}: adds capabilities")
            if sc.get("privileged"):
                p.add(f"{cw}: privileged")
            if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
                p.add(f"{cw}: may run as root")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in resources.get(kind, {}):
                        p.add(f"{cw}: no resources.{kind}.{res}")
            is_sidecar = c.get("restartPolicy") == "Always"
            if c in spec.get("containers", []) or is_sidecar:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        p.add(f"{cw}: no {probe}")
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                p.add(f"{cw}: image {image!r} has no pinned tag")


def check_references(objects: list[dict], p: Problems) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    templates = pod_templates(objects)

    for workload, template in templates:
        mounted = {m["name"] for c in all_containers(template["spec"]) for m in c.get("volumeMounts", [])}
        for volume in template["spec"].get("volumes", []):
            ref = volume.get("configMap", {}).get("name")
            if ref and ref not in by_kind.get("ConfigMap", {}):
                p.add(f"{kind_name(workload)}: volume {volume['name']} names a missing ConfigMap {ref}")
            # A volume left behind by a removed container.
            if volume["name"] not in mounted:
                p.add(f"{kind_name(workload)}: volume {volume['name']} is mounted by no container")
        # A mount whose volume was removed (the API server would refuse the pod). A StatefulSet's
        # volumeClaimTemplates are volumes of its pods too.
        declared = {v["name"] for v in template["spec"].get("volumes", [])} | {
            claim["metadata"]["name"] for claim in workload["spec"].get("volumeClaimTemplates", [])}
        for c in all_containers(template["spec"]):
            for m in c.get("volumeMounts", []):
                if m["name"] not in declared:
                    p.add(f"{kind_name(workload)} container {c['name']}: mounts volume {m['name']}, which the pod "
                          "does not declare")

    for svc in by_kind.get("Service", {}).values():
        selector = svc["spec"].get("selector", {})
        pods = [t for _, t in templates if labels_match(selector, t["metadata"].get("labels", {}))]
        if not pods:
            p.add(f"{kind_name(svc)}: selector {selector} matches no pod template")
            continue
        port_names = container_port_names(pods)
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and target not in port_names:
                p.add(f"{kind_name(svc)}: targetPort {target} is no container port of its pods")

    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa["spec"]["scaleTargetRef"]
        target = by_kind.get(ref["kind"], {}).get(ref["name"])
        if target is None:
            p.add(f"{kind_name(hpa)}: scales a missing {ref['kind']}/{ref['name']}")
            continue
        names = {c["name"] for c in target["spec"]["template"]["spec"].get("containers", [])}
        for metric in hpa["spec"].get("metrics", []):
            container = metric.get("containerResource", {}).get("container")
            if container and container not in names:
                p.add(f"{kind_name(hpa)}: metric on container {container}, which {ref['name']} does not run")

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in by_kind.get(kind, {}).values():
            spec = obj["spec"]
            selector = (spec.get("selector") or spec.get("podSelector") or {}).get("matchLabels", {})
            pods = [t for _, t in templates if labels_match(selector, t["metadata"].get("labels", {}))]
            if not pods:
                p.add(f"{kind_name(obj)}: selector {selector} matches no pod template")
                continue
            port_names = container_port_names(pods)
            for rule in obj["spec"].get("ingress", []):
                for port in rule.get("ports", []):
                    if isinstance(port.get("port"), str) and port["port"] not in port_names:
                        p.add(f"{kind_name(obj)}: port {port['port']} is no container port of its pods")


def config_file(template: dict, container: dict, objects: list[dict], path: str) -> str | None:
    """The content of `path` as the container sees it: from the ConfigMap volume mounted there."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        ref = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
        for obj in objects:
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == ref:
                return obj.get("data", {}).get(path[len(prefix) :])
    return None


def flags_of(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def mounted_config(template, container, objects, flag, where, local: Path, p):
    """The file a container's `flag PATH` argument names, from the ConfigMap mounted there, copied
    to `local` for validation: (path, text), or None after reporting why there is none."""
    args = [str(a) for a in container.get("args", [])]
    if flag not in args:
        p.add(f"{where} container {container['name']}: no {flag} argument")
        return None
    path = args[args.index(flag) + 1]
    text = config_file(template, container, objects, path)
    if text is None:
        p.add(f"{where} container {container['name']}: {path} comes from no ConfigMap")
        return None
    local.write_text(text)
    return path, text


def check_programs(objects: list[dict], opts: argparse.Namespace, workdir: Path, p: Problems) -> list[str]:
    """Runs envoy --mode validate and responses-router validate on the configs the pods get; the
    form of each gateway's router ("sidecar" or "module"), for every Envoy container found."""
    envoy, router, simulator = opts.envoy, opts.router, opts.simulator
    help_cache: dict[tuple[str, ...], set[str]] = {}

    def known_flags(*argv: str) -> set[str]:
        if argv not in help_cache:
            help_cache[argv] = set(re.findall(r"--[a-z][a-z0-9-]*", run([*argv, "--help"]).stdout))
        return help_cache[argv]

    def check_flags(where: str, container: dict, program: str, flags: list[str], known: set[str]) -> None:
        for flag in flags:
            if flag not in known:
                p.add(f"{where} container {container['name']}: `{program}` has no flag {flag}")

    forms = []
    for workload, template in pod_templates(objects):
        where = kind_name(workload)
        for c in all_containers(template["spec"]):
            args = [str(a) for a in c.get("args", [])]
            if c["name"] == ENVOY_CONTAINER:
                local = workdir / f"{workload['metadata']['name']}-envoy.yaml"
                found = mounted_config(template, c, objects, "--config-path", where, local, p)
                if found is None:
                    forms.append("unknown")
                    continue
                path, text = found
                config = yaml.safe_load(text)
                check_envoy_ports(where, c, config, p)
                modules = [f for f in typed_configs(config) if f.get("@type") == MODULE_FILTER]
                if modules:
                    forms.append("module")
                    check_module_gateway(workload, template, c, objects, text, config, modules, opts, workdir, p)
                    continue
                forms.append("sidecar")
                argv = [envoy, "--mode", "validate"] + [str(local) if a == path else a for a in args]
                result = run(argv)
                if result.returncode != 0:
                    p.add(f"{where}: `{shlex.join(argv)}` failed:\n{indent(result, 6)}")
                check_clusters(workload, template, objects, text, p)
                check_router_socket(workload, template, text, p)
            elif image_name(c) == SIMULATOR_IMAGE:
                check_flags(where, c, SIMULATOR_IMAGE, flags_of(args), known_flags(simulator))
            elif args and args[0] == "serve":
                check_flags(where, c, "responses-router serve", flags_of(args[1:]), known_flags(router, "serve"))
                local = workdir / f"{workload['metadata']['name']}-routing.yaml"
                if mounted_config(template, c, objects, "--config", where, local, p) is None:
                    continue
                # With the container's environment: RESPONSES_ROUTER__* override the file.
                # --offline: the Secrets its credential and certificate files come from are not
                # here (the pod gets them); everything else is checked.
                result = run([router, "validate", "--offline", "--config", str(local)], container_env(c))
                if result.returncode != 0:
                    p.add(f"{where}: responses-router validate failed:\n{indent(result)}")
    return forms


def typed_configs(node):
    """Every object with an "@type" in an Envoy config, nested ones (a filter wrapped in a
    matcher) included."""
    if isinstance(node, dict):
        if "@type" in node:
            yield node
        for value in node.values():
            yield from typed_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from typed_configs(value)


def check_envoy_ports(where: str, container: dict, config: dict, p: Problems) -> None:
    """Every port the Envoy container declares (the Service's, the probes') is a listener of its
    config on all pod addresses, and every probe dials one of those ports."""
    listening = {
        int(sock["port_value"])
        for listener in config.get("static_resources", {}).get("listeners", [])
        for sock in [listener.get("address", {}).get("socket_address", {})]
        if sock.get("address") in {"0.0.0.0", "::"} and "port_value" in sock
    }
    ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
    for name, number in ports.items():
        if number not in listening:
            p.add(f"{where} container envoy: port {name} ({number}) is no listener of Envoy's config on "
                  f"all pod addresses (those are {sorted(listening)})")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        target = container.get(probe, {}).get("httpGet", {}).get("port")
        if target is None:
            continue
        number = ports.get(target) if isinstance(target, str) else target
        if number not in listening:
            p.add(f"{where} container envoy: the {probe} dials port {target}, no listener of Envoy's config")


def check_clusters(workload: dict, template: dict, objects: list[dict], envoy_text: str, p: Problems) -> None:
    """The sidecar form: the router's routing config against Envoy's clusters, and its memory."""
    router = next((c for c in all_containers(template["spec"]) if c["name"] == ROUTER_CONTAINER), None)
    if router is None:
        p.add(f"{kind_name(workload)}: no `{ROUTER_CONTAINER}` container next to envoy")
        return
    args = [str(a) for a in router.get("args", [])]
    if "--config" not in args:
        return  # reported by check_programs
    routing_text = config_file(template, router, objects, args[args.index("--config") + 1])
    if routing_text is None:
        return  # reported by check_programs
    check_routing_clusters(workload, objects, routing_text, envoy_text, p)
    check_store_memory(kind_name(workload), router, routing_text, p)


def check_routing_clusters(workload: dict, objects: list[dict], routing_text: str, envoy_text: str,
                           p: Problems) -> None:
    """Every cluster the routing config names is an Envoy cluster; pinned clusters are headless."""
    routing = yaml.safe_load(routing_text)
    envoy = yaml.safe_load(envoy_text)
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    pinned = {c["name"] for c in routing.get("clusters", []) if c.get("pin_host")}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    namespace = workload["metadata"].get("namespace")
    for model in routing.get("models", []):
        for ref in model.get("clusters", []):
            name = ref["name"]
            if name not in clusters:
                p.add(f"routing config: model {model['name']} uses cluster {name}, which Envoy lacks")
                continue
            if clusters[name].get("type") != "STRICT_DNS":
                # e.g. responses_router or envoy_admin: in the pod, never a model server.
                p.add(f"routing config: model {model['name']} uses cluster {name}, no model-server cluster")
                continue
            for lb in clusters[name]["load_assignment"]["endpoints"]:
                for ep in lb["lb_endpoints"]:
                    sock = ep["endpoint"]["address"]["socket_address"]
                    labels = str(sock["address"]).split(".")
                    # `svc`, or `svc.ns[.svc...]` naming this output's namespace.
                    if len(labels) > 1 and labels[1] != namespace:
                        continue
                    svc = services.get(labels[0])
                    if svc is None:
                        continue
                    if sock["port_value"] not in {port["port"] for port in svc["spec"]["ports"]}:
                        p.add(f"Envoy cluster {name}: Service {labels[0]} has no port {sock['port_value']}")
                    if name in pinned and svc["spec"].get("clusterIP") != "None":
                        p.add(
                            f"Envoy cluster {name} has pin_host: true but Service {labels[0]} is not headless "
                            "(clusterIP: None): Envoy would see one address, not the pods"
                        )


MEMORY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?")
MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
                "T": 10**12, None: 1}


def check_store_memory(where: str, container: dict, routing_text: str, p: Problems) -> None:
    """The container that holds the affinity store (the router sidecar, or Envoy with the module)
    requests at least what the store takes at `affinity.capacity` ids: a pod scheduled on less
    is OOM-killed once the store fills up."""
    affinity = yaml.safe_load(routing_text).get("affinity") or {}
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    learn = env.get("RESPONSES_ROUTER__AFFINITY__LEARN", affinity.get("learn", True))
    if str(learn).lower() == "false":
        return  # no store
    capacity = int(env.get("RESPONSES_ROUTER__AFFINITY__CAPACITY", affinity.get("capacity", DEFAULT_CAPACITY)))
    request = container.get("resources", {}).get("requests", {}).get("memory")
    m = MEMORY.fullmatch(str(request)) if request is not None else None
    if m is None:
        return  # none is reported by check_pod_security; another spelling is the schemas' to judge
    need = capacity * STORE_BYTES_PER_ID
    if float(m.group(1)) * MEMORY_UNITS[m.group(2)] < need:
        p.add(f"{where} container {container['name']}: requests {request} of memory, less than the affinity "
              f"store takes at capacity ({capacity} ids x {STORE_BYTES_PER_ID} bytes = {need / 2**20:.0f} MiB)")


def check_module_gateway(workload: dict, template: dict, envoy_c: dict, objects: list[dict], envoy_text: str,
                         config: dict, modules: list[dict], opts: argparse.Namespace, workdir: Path,
                         p: Problems) -> None:
    """The router inside Envoy: nothing of the sidecar form left in the pod, the module's routing
    config from a ConfigMap mounted into Envoy, both configs validated by the real module, and
    Envoy's image the one that carries it (`config` is `envoy_text` parsed; `modules`, its module
    filters)."""
    where = kind_name(workload)
    spec = template["spec"]

    # One form: no ext_proc, no router cluster or socket, no router container.
    if any(f.get("@type") == EXT_PROC_FILTER for f in typed_configs(config)):
        p.add(f"{where}: Envoy's config has the router module and ext_proc filters: one form or the other")
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == ROUTER_CLUSTER:
            p.add(f"{where}: Envoy's config has the router cluster {ROUTER_CLUSTER}, but the router is the module")
        for lb in cluster.get("load_assignment", {}).get("endpoints", []):
            for ep in lb.get("lb_endpoints", []):
                if "pipe" in ep.get("endpoint", {}).get("address", {}):
                    p.add(f"{where}: Envoy cluster {cluster['name']} dials a Unix socket: no router process "
                          "runs beside Envoy in the module form")
    for c in all_containers(spec):
        if c is envoy_c:
            continue
        args = [str(a) for a in c.get("args", [])]
        if c["name"] == ROUTER_CONTAINER or image_name(c) == ROUTER_IMAGE or args[:1] == ["serve"]:
            p.add(f"{where} container {c['name']}: a router runs beside Envoy, whose config routes with the "
                  "module and never calls it: remove the sidecar")
    socket_dir = ROUTER_SOCKET.rsplit("/", 1)[0]
    for c in all_containers(spec):
        for m in c.get("volumeMounts", []):
            if m["mountPath"].rstrip("/") == socket_dir:
                p.add(f"{where} container {c['name']}: mounts {socket_dir}, the ext_proc socket's directory, "
                      "which the module form has no use for")
    if image_name(envoy_c) != MODULE_IMAGE:
        p.add(f"{where} container envoy: image {envoy_c.get('image')!r} carries no router module: the module "
              f"form runs {MODULE_IMAGE} (Dockerfile, stage {MODULE_STAGE})")

    if len(modules) != 1:
        p.add(f"{where}: Envoy's config loads the router module {len(modules)} times (one filter, one "
              "routing config and one affinity store per Envoy)")
        return
    module = modules[0]
    if module.get("dynamic_module_config", {}).get("name") != MODULE_NAME:
        p.add(f"{where}: the module filter loads {module.get('dynamic_module_config', {}).get('name')!r}, "
              f"not {MODULE_NAME} (lib{MODULE_NAME}.so)")
    value = module.get("filter_config", {}).get("value", {})
    routing_path = str(value.get("routing_yaml", ""))
    if not routing_path.startswith("/"):
        p.add(f"{where}: the module filter's routing_yaml is {routing_path!r}: it must name the routing "
              "ConfigMap's file by its absolute path in the container")
        return
    routing_text = config_file(template, envoy_c, objects, routing_path)
    if routing_text is None:
        p.add(f"{where}: the module reads its routing config from {routing_path}, which comes from no "
              "ConfigMap mounted into the envoy container")
        return
    check_routing_clusters(workload, objects, routing_text, envoy_text, p)
    check_store_memory(where, envoy_c, routing_text, p)
    check_module_image(where, envoy_c, opts, p)

    # The configs as Envoy would load them in the pod, from this machine's copies: the routing
    # config in place of the mounted file, the model directory (in Envoy's environment) mapped by
    # container_env, and the module itself from --module-dir in place of the image's.
    name = workload["metadata"]["name"]
    local_routing = workdir / f"{name}-module-routing.yaml"
    local_routing.write_text(routing_text)
    line = re.compile(rf"^(\s*routing_yaml:\s*)[\"']?{re.escape(routing_path)}[\"']?\s*$", re.MULTILINE)
    local_text, count = line.subn(lambda m: m.group(1) + str(local_routing), envoy_text)
    if count != 1:
        p.add(f"{where}: expected one `routing_yaml: {routing_path}` line in Envoy's config, found {count}")
        return
    local_envoy = workdir / f"{name}-module-envoy.yaml"
    local_envoy.write_text(local_text)
    so = Path(opts.module_dir) / f"lib{MODULE_NAME}.so"
    if not so.is_file():
        p.add(f"no {so}: build the module (cargo build -p responses-router-envoy-module)")
        return
    args = [str(a) for a in envoy_c.get("args", [])]
    config_path = arg_value(args, "--config-path")
    argv = [opts.envoy, "--mode", "validate"] + [str(local_envoy) if a == config_path else a for a in args]
    env = container_env(envoy_c)
    env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(so.parent)
    result = run(argv, env)
    if result.returncode != 0:
        p.add(f"{where}: `ENVOY_DYNAMIC_MODULES_SEARCH_PATH={so.parent} {shlex.join(argv)}` failed:\n"
              f"{indent(result, 6)}")
    # The router's own validation of the same file with Envoy's environment: its messages, and
    # the same check the sidecar form gets (--offline, as there).
    result = run([opts.router, "validate", "--offline", "--config", str(local_routing)], env)
    if result.returncode != 0:
        p.add(f"{where}: responses-router validate (with Envoy's environment) failed:\n{indent(result)}")


def dockerfile_stages(path: Path) -> dict[str, dict]:
    """The named stages of a Dockerfile: their base image, ENV values and COPY/ADD (sources, dest).
    Enough of the syntax for this repository's Dockerfile (continuations, comments, flags)."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: dict[str, dict] = {}
    stage: dict | None = None
    for instruction in logical:
        word, _, rest = instruction.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = [x for x in rest.split() if not x.startswith("--")]
            stage = {"from": parts[0], "env": {}, "copies": []}
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages[parts[2]] = stage
        elif stage is None:
            continue
        elif word == "ENV":
            tokens = shlex.split(rest)
            if tokens and "=" not in tokens[0]:
                stage["env"][tokens[0]] = " ".join(tokens[1:])
            else:
                stage["env"].update(tok.split("=", 1) for tok in tokens)
        elif word in {"COPY", "ADD"}:
            tokens = [x for x in shlex.split(rest) if not x.startswith("--")]
            stage["copies"].append((tokens[:-1], tokens[-1]))
    return stages


def envoy_release(text: str) -> tuple[int, int] | None:
    """(major, minor) of an Envoy version in `text` (`1.40.0`, `v1.40.0`)."""
    m = re.search(r"(?<![\d.])v?(\d+)\.(\d+)\.\d+", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_module_image(where: str, envoy_c: dict, opts: argparse.Namespace, p: Problems) -> None:
    """The Dockerfile's module stage carries what the pod relies on. No Docker engine runs here, so
    the image is never built by the checks: this is what can be known of it from its recipe."""
    stage = dockerfile_stages(opts.dockerfile).get(MODULE_STAGE)
    if stage is None:
        p.add(f"{opts.dockerfile.name}: no stage {MODULE_STAGE}, which builds the {MODULE_IMAGE} image")
        return
    base, _, tag = stage["from"].partition(":")
    if base != UPSTREAM_ENVOY_IMAGE:
        p.add(f"{opts.dockerfile.name} stage {MODULE_STAGE}: built on {stage['from']}, not Envoy's image")
    # The sidecar gateway's Envoy (the base's `images:`): the two forms run one Envoy release.
    kustomization = yaml.safe_load((HERE / "base" / "kustomization.yaml").read_text())
    sidecar_tag = next((i.get("newTag") for i in kustomization.get("images", [])
                        if i.get("name") == UPSTREAM_ENVOY_IMAGE), None)
    if tag != sidecar_tag:
        p.add(f"{opts.dockerfile.name} stage {MODULE_STAGE}: Envoy {tag!r}, the sidecar gateway's is "
              f"{sidecar_tag!r} (base/kustomization.yaml)")
    # The Envoy these checks (and the tests) load the module into: its ABI is pinned per minor.
    tested = envoy_release(run([opts.envoy, "--version"]).stdout)
    if tested is None or envoy_release(tag) != tested:
        tested_text = "an unknown version" if tested is None else "%d.%d" % tested
        p.add(f"{opts.dockerfile.name} stage {MODULE_STAGE}: Envoy {tag!r}, but the module is checked here "
              f"(and tested) in Envoy {tested_text}: its ABI changes between minor versions")
    search = {e["name"]: e.get("value") for e in envoy_c.get("env", [])}.get(
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH", stage["env"].get("ENVOY_DYNAMIC_MODULES_SEARCH_PATH"))
    library = f"lib{MODULE_NAME}.so"
    if not search:
        p.add(f"{opts.dockerfile.name} stage {MODULE_STAGE}: no ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH, "
              "where Envoy looks for the module")
    else:
        search = search.rstrip("/")
        if not any(any(Path(s).name == library for s in sources) and
                   dest.rstrip("/") in {search, f"{search}/{library}"}
                   for sources, dest in stage["copies"]):
            p.add(f"{opts.dockerfile.name} stage {MODULE_STAGE}: no COPY of {library} into {search}, "
                  "where ENVOY_DYNAMIC_MODULES_SEARCH_PATH points Envoy")
    dests = [dest.rstrip("/") for _, dest in stage["copies"]]
    for e in envoy_c.get("env", []):
        value = str(e.get("value", ""))
        if value.startswith(IMAGE_MODELS) and not any(value == d or value.startswith(d + "/") for d in dests):
            p.add(f"{where} container envoy: {e['name']}={value}, which the {MODULE_STAGE} stage "
                  "does not put in the image")


def arg_value(args: list[str], flag: str) -> str | None:
    """The value of `flag VALUE` or `flag=VALUE` in `args`; None when absent."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def check_router_socket(workload: dict, template: dict, envoy_text: str, p: Problems) -> None:
    """The listener layout: ext_proc only on a Unix socket shared with Envoy through an emptyDir,
    no ext_proc on TCP, and kubelet's gRPC probes on the health-only port."""
    where = kind_name(workload)
    containers = {c["name"]: c for c in all_containers(template["spec"])}
    router, envoy_c = containers.get(ROUTER_CONTAINER), containers.get(ENVOY_CONTAINER)
    if router is None or envoy_c is None:
        return  # reported by check_clusters
    args = [str(a) for a in router.get("args", [])]
    socket = arg_value(args, "--uds")
    if socket is None:
        p.add(f"{where}: the router has no --uds: ext_proc must be served on a Unix socket shared with Envoy")
        return
    if arg_value(args, "--listen") != "none":
        p.add(f"{where}: the router serves ext_proc on TCP too (--listen {arg_value(args, '--listen')}): "
              "it must be `--listen none`, the Unix socket only")
    envoy = yaml.safe_load(envoy_text)
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    router_cluster = clusters.get("responses_router")
    paths = [] if router_cluster is None else [
        ep["endpoint"]["address"].get("pipe", {}).get("path")
        for lb in router_cluster["load_assignment"]["endpoints"] for ep in lb["lb_endpoints"]
    ]
    if paths != [socket]:
        p.add(f"{where}: Envoy's responses_router cluster dials {paths}, the router serves on {socket!r}")
    directory = socket.rsplit("/", 1)[0]
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for c in (router, envoy_c):
        mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory]
        if not mounts:
            p.add(f"{where} container {c['name']}: mounts no volume at {directory} (the ext_proc socket's directory)")
        elif "emptyDir" not in volumes.get(mounts[0]["name"], {}):
            p.add(f"{where}: volume {mounts[0]['name']} at {directory} is not an emptyDir (it must stay in the pod)")
        elif mounts[0].get("readOnly"):
            p.add(f"{where} container {c['name']}: mounts {directory} read-only (a socket needs write access)")
    socket_volumes = {m["name"] for c in (router, envoy_c) for m in c.get("volumeMounts", [])
                      if m["mountPath"].rstrip("/") == directory}
    for c in all_containers(template["spec"]):
        if c is not router and c is not envoy_c:
            for m in c.get("volumeMounts", []):
                if m["name"] in socket_volumes:
                    p.add(f"{where} container {c['name']}: mounts the ext_proc socket's volume {m['name']}: "
                          "only envoy and the router may reach ext_proc")
    health = arg_value(args, "--health-listen")
    health_port = int(health.rsplit(":", 1)[1]) if health and health.rsplit(":", 1)[-1].isdigit() else None
    if health_port is None:
        p.add(f"{where}: the router has no --health-listen HOST:PORT for kubelet's gRPC probes")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = router.get(probe, {}).get("grpc")
        if grpc is not None and grpc.get("port") != health_port:
            p.add(f"{where}: the router's {probe} dials port {grpc.get('port')}, its health-only port is {health_port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--envoy", required=True)
    parser.add_argument("--router", required=True)
    parser.add_argument("--simulator", required=True)
    parser.add_argument("--module-dir", required=True,
                        help=f"the directory with lib{MODULE_NAME}.so, which Envoy loads to validate the module form")
    parser.add_argument("--dockerfile", type=Path, default=DOCKERFILE,
                        help="the Dockerfile whose module stage builds the module form's Envoy image")
    parser.add_argument("--k8s-version", action="append", required=True, dest="versions")
    parser.add_argument("--self-contained", action="append", default=[],
                        help="a kustomization whose every model-server Service must be in its own output")
    parser.add_argument("dirs", nargs="+")
    opts = parser.parse_args()

    failed = False
    with tempfile.TemporaryDirectory(prefix="k8s-check-") as tmp:
        for d in opts.dirs:
            p = Problems()
            rendered = run([opts.kubectl, "kustomize", str(HERE / d)])
            if rendered.returncode != 0:
                p.add(f"kubectl kustomize failed:\n{indent(rendered)}")
                objects = []
            else:
                objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
                validate_schemas(objects, opts.versions, p)
                check_pod_security(objects, p)
                check_references(objects, p)
                workdir = Path(tmp) / d.replace("/", "_")
                workdir.mkdir()
                forms = check_programs(objects, opts, workdir, p)
                if not forms:
                    p.add("no Deployment runs an `envoy` container")
                if d in opts.self_contained:
                    check_self_contained(objects, p)
            if p.items:
                failed = True
                print(f"FAIL {d}:", file=sys.stderr)
                for item in p.items:
                    print(f"  - {item}", file=sys.stderr)
            else:
                kinds = sorted({o["kind"] for o in objects})
                labels = {"sidecar": "ext_proc sidecar", "module": "inside Envoy (module)"}
                router = ", ".join(labels.get(f, f) for f in sorted(set(forms)))
                print(f"ok  {d}: {len(objects)} objects ({', '.join(kinds)}); "
                      f"schemas {', '.join(opts.versions)}; envoy and routing configs valid; router: {router}")
    return 1 if failed else 0


def check_self_contained(objects: list[dict], p: Problems) -> None:
    """Every model-server address of the Envoy config is a Service of this output."""
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    for obj in objects:
        if obj["kind"] != "ConfigMap" or "envoy.yaml" not in obj.get("data", {}):
            continue
        envoy = yaml.safe_load(obj["data"]["envoy.yaml"])
        for cluster in envoy["static_resources"]["clusters"]:
            if cluster.get("type") != "STRICT_DNS":
                continue
            for lb in cluster["load_assignment"]["endpoints"]:
                for ep in lb["lb_endpoints"]:
                    address = ep["endpoint"]["address"]["socket_address"]["address"]
                    if address.split(".")[0] not in services:
                        p.add(f"Envoy cluster {cluster['name']}: {address} is no Service of this kustomization")


if __name__ == "__main__":
    sys.exit(main())
