#!/usr/bin/env python3
"""Render the Kubernetes copies of deploy/envoy.yaml and deploy/routing.yaml, and deploy/envoy-mtls.yaml.

    python3 deploy/kubernetes/render.py           write every rendered file
    python3 deploy/kubernetes/render.py --check   write nothing; exit 1 (with a diff) if one is stale

deploy/envoy.yaml and deploy/routing.yaml stay the single source of truth (the local stack and the
end-to-end tests run them). Kustomize reads files only inside a kustomization's own directory, so
the kustomizations get generated copies, which scripts/k8s-check re-renders and compares:

  base/routing.yaml               deploy/routing.yaml, byte for byte, under a "generated" header
  DIR/envoy.yaml for each         deploy/envoy.yaml with the Kubernetes differences below, the
  DIR/upstreams.ini               model-server addresses taken from DIR/upstreams.ini; or, when
                                  that file says `[router] form = module`, deploy/envoy-module.yaml
                                  (the router inside Envoy, rendered from deploy/envoy.yaml by
                                  deploy/render_module.py, which must be up to date)

The Kubernetes differences (each marked `k8s:` in the output; everything else is kept as written,
comments included):

  - listeners bind 0.0.0.0 instead of 127.0.0.1: the Service sends traffic to the pod's IP;
  - every model-server cluster becomes STRICT_DNS on the Service named in upstreams.ini: Envoy
    uses every address the name resolves to as a host, so a headless Service (one address per
    ready pod) lets host pinning send a conversation back to its pod;
  - the router cluster is the sidecar's Unix socket (ROUTER_SOCKET, in an emptyDir volume that
    both containers mount): ext_proc is not reachable over the network at all; the module form
    has no router cluster, and its filter's `routing_yaml` is the routing ConfigMap mounted into
    Envoy (ROUTING_MOUNT) instead;
  - a `probes` listener on 0.0.0.0:9902 forwards GET /ready (kubelet's readiness probe) and
    GET /stats/prometheus to the admin interface, which stays on loopback.

deploy/envoy-mtls.yaml is deploy/envoy.yaml for a router that runs apart from Envoy (a
Deployment and Service of its own): the router cluster is the router Service's DNS name, reached
over TLS with a client certificate (differences marked `mtls:`; scripts/test validates it and
tests/e2e/test_transport.py runs it).

Only the Python standard library is used, and the edits are line-based with exact anchors: a
change to deploy/envoy.yaml that moves an anchor makes this script fail loudly, never guess.
"""

from __future__ import annotations

import configparser
import difflib
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent  # deploy/kubernetes
DEPLOY = HERE.parent  # deploy
ENVOY_SOURCE = DEPLOY / "envoy.yaml"
# The router inside Envoy (the dynamic module): deploy/render_module.py's rendering of envoy.yaml.
MODULE_SOURCE = DEPLOY / "envoy-module.yaml"
ROUTING_SOURCE = DEPLOY / "routing.yaml"
ROUTING_COPY = HERE / "base" / "routing.yaml"
MTLS_OUTPUT = DEPLOY / "envoy-mtls.yaml"

# The cluster of deploy/envoy.yaml that is the router (the sidecar in the pod; apart, for mTLS).
ROUTER_CLUSTER = "responses_router"
# Where the router sidecar serves ext_proc in the pod: a Unix socket in an emptyDir volume mounted
# by both containers (base/gateway.yaml; scripts/k8s-check checks that they agree).
ROUTER_SOCKET = "/run/responses-router/router.sock"
# Where the routing ConfigMap is mounted: the sidecar's `--config` (base/gateway.yaml), and in the
# module form Envoy's, which the module's filter config names (overlays/module mounts it there;
# scripts/k8s-check checks both).
ROUTING_MOUNT = "/etc/responses-router/routing.yaml"
# The mTLS example: the router Service's name (also the name its certificate must carry) and the
# directory Envoy's TLS files come from (a Secret's or projected volume's mount).
MTLS_ROUTER_NAME = "responses-router.example.internal"
MTLS_DIR = "/etc/envoy/router-tls"
# The listener kubelet probes (GET /ready) and Prometheus scrapes (GET /stats/prometheus).
PROBE_PORT = 9902
ADMIN_CLUSTER = "envoy_admin"


class RenderError(Exception):
    pass


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(DEPLOY.parent))
    except ValueError:
        return str(path)


# The reserved section of an upstreams.ini that says how the router runs in that kustomization:
#   [router]
#   form = sidecar    the ext_proc sidecar (the default, also when the section is absent):
#                     envoy.yaml is rendered from deploy/envoy.yaml
#   form = module     inside Envoy, as the dynamic module: from deploy/envoy-module.yaml
FORM_SECTION = "router"
FORMS = ("sidecar", "module")


def read_upstreams(path: Path) -> tuple[str, dict[str, tuple[str, int]]]:
    """upstreams.ini: the router's form ([router] form = ...), and one [cluster] section per
    model-server cluster, with `address` and `port`."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(path.read_text(), source=str(path))
    form = "sidecar"
    if parser.has_section(FORM_SECTION):
        section = parser[FORM_SECTION]
        if set(section) != {"form"} or section["form"].strip() not in FORMS:
            raise RenderError(f"{rel(path)} [{FORM_SECTION}]: expected exactly `form = sidecar` or `form = module`")
        form = section["form"].strip()
    upstreams: dict[str, tuple[str, int]] = {}
    for name in parser.sections():
        if name == FORM_SECTION:
            continue
        section = parser[name]
        unknown = set(section) - {"address", "port"}
        if unknown:
            raise RenderError(f"{rel(path)} [{name}]: unknown keys {sorted(unknown)} (only address, port)")
        address = section.get("address", "").strip()
        # A DNS name (or IP) Envoy can resolve: letters, digits, '-', '.'; no scheme, no port.
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", address):
            raise RenderError(f"{rel(path)} [{name}]: address {address!r} is not a DNS name")
        port = section.get("port", "").strip()
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise RenderError(f"{rel(path)} [{name}]: port {port!r} is not a port number")
        upstreams[name] = (address, int(port))
    if not upstreams:
        raise RenderError(f"{rel(path)}: no [cluster] sections")
    return form, upstreams


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def index_of(lines: list[str], text: str, source: Path = ENVOY_SOURCE) -> int:
    """The index of the one line equal to `text` (without its newline)."""
    found = [i for i, line in enumerate(lines) if line.rstrip("\n") == text]
    if len(found) != 1:
        raise RenderError(f"{rel(source)}: expected exactly one line {text!r}, found {len(found)}")
    return found[0]


def split_items(lines: list[str], source_what: str, source: Path = ENVOY_SOURCE) -> list[tuple[str, list[str]]]:
    """Splits a `  - name: X` list into (name, lines); comments just above an item belong to it."""
    items: list[tuple[str, list[str]]] = []
    pending: list[str] = []
    for line in lines:
        m = re.match(r"^  - name: (\S+)\s*$", line)
        if m:
            items.append((m.group(1), pending + [line]))
            pending = []
        elif items and not (indent_of(line) <= 2 and line.lstrip().startswith("#")):
            items[-1][1].extend(pending + [line])
            pending = []
        else:
            pending.append(line)
    if not items:
        raise RenderError(f"{rel(source)}: no `  - name:` items under {source_what}")
    if any(line.strip() for line in pending):
        raise RenderError(f"{rel(source)}: trailing comment under {source_what} belongs to no item")
    items[-1][1].extend(pending)
    return items


LOOPBACK_ADDRESS = re.compile(r"^(\s*)socket_address: \{ address: 127\.0\.0\.1, port_value: (\d+) \}\s*$")


def expose_listener(name: str, lines: list[str], source: Path = ENVOY_SOURCE) -> list[str]:
    """The listener's own address (its first socket_address) on 0.0.0.0; its comment replaced."""
    for i, line in enumerate(lines):
        m = LOOPBACK_ADDRESS.match(line)
        if m:
            pad, port = m.groups()
            start = i
            above = lines[start - 1] if start > 0 else ""
            while above.lstrip().startswith("#") and indent_of(above) == len(pad):
                start -= 1
                above = lines[start - 1] if start > 0 else ""
            return lines[:start] + [
                f"{pad}# k8s: all pod addresses, so the Service (and kubelet) reach it; only the pod's\n",
                f"{pad}# ports named in the NetworkPolicy are open to other pods.\n",
                f"{pad}socket_address: {{ address: 0.0.0.0, port_value: {port} }}\n",
            ] + lines[i + 1 :]
    raise RenderError(f"{rel(source)}: listener {name}: no loopback `socket_address` line")


def dns_cluster(name: str, lines: list[str], address: str, port: int, ini: Path,
                envoy_source: Path = ENVOY_SOURCE) -> list[str]:
    """A STATIC model-server cluster as STRICT_DNS on one Kubernetes Service name."""
    types = [i for i, line in enumerate(lines) if line.rstrip("\n") == "    type: STATIC"]
    if len(types) != 1:
        raise RenderError(f"{rel(envoy_source)}: cluster {name}: expected one `    type: STATIC` line")
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == "    load_assignment:"]
    if len(starts) != 1:
        raise RenderError(f"{rel(envoy_source)}: cluster {name}: expected one `    load_assignment:` line")
    start = starts[0]
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or indent_of(lines[end]) > 4):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # keep blank lines after the block
        end -= 1
    if f"cluster_name: {name}\n" not in {line.lstrip(" ") for line in lines[start:end]}:
        raise RenderError(f"{rel(envoy_source)}: cluster {name}: no `cluster_name: {name}` in load_assignment")
    endpoint = [
        "    load_assignment:\n",
        f"      cluster_name: {name}\n",
        "      endpoints:\n",
        "      - lb_endpoints:\n",
        "        - endpoint:\n",
        "            address:\n",
        f"              # k8s: the Service named in {ini.parent.name}/{ini.name}.\n",
        f"              socket_address: {{ address: {address}, port_value: {port} }}\n",
    ]
    dns = [
        "    # k8s: STRICT_DNS re-resolves the Service name (every 5 s, Envoy's default) and keeps one\n",
        "    # host per address: one for a ClusterIP Service, one per ready pod for a headless Service.\n",
        "    type: STRICT_DNS\n",
        "    dns_lookup_family: V4_PREFERRED\n",
    ]
    t = types[0]
    if start <= t < end:
        raise RenderError(f"{rel(envoy_source)}: cluster {name}: `type:` inside load_assignment")
    out = list(lines)
    # The later block first, so the earlier one's indexes still hold.
    for (a, b), new in sorted([((start, end), endpoint), ((t, t + 1), dns)], reverse=True):
        out[a:b] = new
    return out


def probe_listener(admin_port: int) -> list[str]:
    text = f"""\
  # k8s: kubelet's readiness probe (GET /ready) and Prometheus (GET /stats/prometheus) reach the
  # admin interface through this listener. The admin interface itself stays on loopback: it can
  # change Envoy's state (/quitquitquit, /drain_listeners, ...), and only these two read-only
  # paths, with GET, are forwarded; everything else gets a 404 here.
  - name: probes
    address:
      socket_address: {{ address: 0.0.0.0, port_value: {PROBE_PORT} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probes
          codec_type: AUTO
          normalize_path: true
          merge_slashes: true
          route_config:
            name: probes
            virtual_hosts:
            - name: probes
              domains: ["*"]
              routes:
              - match:
                  path: /ready
                  headers: [{{ name: ":method", string_match: {{ exact: GET }} }}]
                route: {{ cluster: {ADMIN_CLUSTER}, timeout: 2s }}
              - match:
                  path: /stats/prometheus
                  headers: [{{ name: ":method", string_match: {{ exact: GET }} }}]
                route: {{ cluster: {ADMIN_CLUSTER}, timeout: 5s }}
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 404 }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router

"""
    return text.splitlines(keepends=True)


def admin_cluster(admin_port: int) -> list[str]:
    text = f"""
  # k8s: the admin interface (loopback, above), for the `probes` listener only. The routing
  # listener cannot pick it: `x-router-cluster` from a client is stripped before routing, and the
  # router only names clusters of the routing config, which must not list this one (checked by
  # scripts/k8s-check).
  - name: {ADMIN_CLUSTER}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {ADMIN_CLUSTER}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
"""
    return text.splitlines(keepends=True)


def router_endpoint(lines: list[str]) -> int:
    """The index of the router cluster's one loopback `socket_address` line."""
    found = [i for i, line in enumerate(lines) if LOOPBACK_ADDRESS.match(line)]
    if len(found) != 1:
        raise RenderError(f"{rel(ENVOY_SOURCE)}: cluster {ROUTER_CLUSTER}: expected one loopback `socket_address`")
    return found[0]


def unix_socket_router(lines: list[str], socket: str = ROUTER_SOCKET) -> list[str]:
    """The router cluster on the sidecar's Unix socket instead of loopback TCP."""
    i = router_endpoint(lines)
    pad = LOOPBACK_ADDRESS.match(lines[i]).group(1)
    return lines[:i] + [
        f"{pad}# k8s: the router sidecar's Unix socket, in an emptyDir volume that only this pod's\n",
        f"{pad}# two containers mount: no other pod (nor the node) can speak ext_proc to the router.\n",
        f"{pad}pipe: {{ path: {socket} }}\n",
    ] + lines[i + 1 :]


def router_on_socket(text: str, socket: str) -> str:
    """An Envoy config's text (deploy/envoy.yaml's shape) with only its router cluster moved onto
    the Unix socket `socket`, as the pod's config has it: tests/e2e/test_transport.py runs the
    local stack this way, with its own socket."""
    lines = text.splitlines(keepends=True)
    clusters_at = index_of(lines, "  clusters:")
    out = lines[: clusters_at + 1]
    for name, item in split_items(lines[clusters_at + 1 :], "clusters"):
        out += unix_socket_router(item, socket) if name == ROUTER_CLUSTER else item
    return "".join(out)


def mtls_router(lines: list[str]) -> list[str]:
    """The router cluster as a remote Service reached over mTLS."""
    out = list(lines)
    i = router_endpoint(out)
    pad, port = LOOPBACK_ADDRESS.match(out[i]).groups()
    out[i] = f"{pad}socket_address: {{ address: {MTLS_ROUTER_NAME}, port_value: {port} }}\n"
    out.insert(i, f"{pad}# mtls: the router Service's DNS name and its TLS port (serve --listen 0.0.0.0:{port}).\n")
    load = [j for j, line in enumerate(out) if line.rstrip("\n") == "    load_assignment:"]
    if len(load) != 1:
        raise RenderError(f"{rel(ENVOY_SOURCE)}: cluster {ROUTER_CLUSTER}: expected one `    load_assignment:` line")
    out[load[0]:load[0]] = MTLS_TRANSPORT_SOCKET.splitlines(keepends=True)
    types = [j for j, line in enumerate(out) if line.rstrip("\n") == "    type: STATIC"]
    if len(types) != 1:
        raise RenderError(f"{rel(ENVOY_SOURCE)}: cluster {ROUTER_CLUSTER}: expected one `    type: STATIC` line")
    out[types[0] : types[0] + 1] = [
        "    # mtls: the router's Service name, re-resolved every 5 s; every address is a host (a\n",
        "    # headless Service spreads the gateways' connections over the router pods).\n",
        "    type: STRICT_DNS\n",
        "    dns_lookup_family: V4_PREFERRED\n",
    ]
    return out


MTLS_TRANSPORT_SOCKET = f"""\
    # mtls: TLS to the router, with this Envoy's client certificate; the router serves only
    # clients whose certificate a CA of its --tls-client-ca bundle signed. The certificate, its
    # key and the CA that signed the router's certificate come through SDS from files in
    # {MTLS_DIR}/ (deploy/router-tls/ has the two SDS files): Envoy re-reads them when an
    # entry of that directory is moved, as kubelet does when it updates a Secret volume, so the
    # gateway's certificate rotates without a restart (the router re-reads its own files too).
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        # The name the router's certificate is checked against (below) and sent as SNI.
        sni: {MTLS_ROUTER_NAME}
        common_tls_context:
          # gRPC is HTTP/2: the router negotiates h2 only.
          alpn_protocols: [h2]
          # TLS 1.3 only: both ends speak it (Envoy's default maximum for upstreams is 1.2).
          tls_params:
            tls_minimum_protocol_version: TLSv1_3
            tls_maximum_protocol_version: TLSv1_3
          tls_certificate_sds_secret_configs:
          - name: router_client_certificate
            sds_config:
              resource_api_version: V3
              path_config_source:
                path: {MTLS_DIR}/certificate.yaml
                watched_directory: {{ path: {MTLS_DIR} }}
          combined_validation_context:
            # Only the router's own certificate is accepted: one from the right CA *and* for the
            # router's name (Envoy does not check the name against `sni` by itself).
            default_validation_context:
              match_typed_subject_alt_names:
              - san_type: DNS
                matcher: {{ exact: {MTLS_ROUTER_NAME} }}
            validation_context_sds_secret_config:
              name: router_ca
              sds_config:
                resource_api_version: V3
                path_config_source:
                  path: {MTLS_DIR}/validation.yaml
                  watched_directory: {{ path: {MTLS_DIR} }}
"""


def render_mtls() -> str:
    lines = ENVOY_SOURCE.read_text().splitlines(keepends=True)
    first = 0
    while first < len(lines) and lines[first].startswith("#"):
        first += 1
    while first < len(lines) and not lines[first].strip():
        first += 1
    lines = lines[first:]
    clusters_at = index_of(lines, "  clusters:")
    clusters = split_items(lines[clusters_at + 1 :], "clusters")
    if ROUTER_CLUSTER not in {name for name, _ in clusters}:
        raise RenderError(f"{rel(ENVOY_SOURCE)}: no cluster named {ROUTER_CLUSTER}")
    out = lines[: clusters_at + 1]
    for name, item in clusters:
        out += mtls_router(item) if name == ROUTER_CLUSTER else item
    head = f"""\
# GENERATED by deploy/kubernetes/render.py from deploy/envoy.yaml. Do not edit: change that file
# and run `python3 deploy/kubernetes/render.py` (scripts/k8s-check fails while this file is stale).
#
# deploy/envoy.yaml for a responses-router that runs apart from Envoy, e.g. one router Deployment
# and Service shared by several gateways, reached over mTLS. The comments below are
# deploy/envoy.yaml's own; the differences are marked `mtls:`:
#   - the router cluster is the router Service's DNS name ({MTLS_ROUTER_NAME}:50051),
#     STRICT_DNS, with a TLS transport socket: Envoy presents a client certificate, and accepts
#     only the router's certificate for that name from the router's CA;
#   - the certificates come through file-based SDS from {MTLS_DIR}/ (deploy/router-tls/
#     holds the two SDS files that name them), so they rotate without restarting Envoy;
#   - a `node` identity, which SDS needs.
# The router side: serve --listen 0.0.0.0:50051 --tls-cert ... --tls-key ... --tls-client-ca ...
# (README.md, "mTLS when Envoy and the router run apart"). The rest (listener, model servers on
# 127.0.0.1) is the local stack's; change it as for any deployment of deploy/envoy.yaml.
# scripts/test validates this file with {MTLS_DIR} pointed at deploy/router-tls/;
# tests/e2e/test_transport.py runs it with certificates made at test time.

# mtls: file-based SDS needs a node identity; any id and cluster name do.
node: {{ id: responses-gateway, cluster: responses-gateway }}

"""
    return head + "".join(out)


def header(ini: Path, output: Path) -> list[str]:
    text = f"""\
# GENERATED by deploy/kubernetes/render.py from deploy/envoy.yaml and
# {rel(ini)}. Do not edit: change those files and run
# `python3 deploy/kubernetes/render.py` (scripts/k8s-check fails while this file is stale).
#
# deploy/envoy.yaml for a Kubernetes pod of the kustomization in {rel(output.parent)}/:
# Envoy with the responses-router as a sidecar in the same pod. The comments below are
# deploy/envoy.yaml's own; the Kubernetes differences are marked `k8s:`:
#   - listeners bind 0.0.0.0 (the Service sends traffic to the pod IP);
#   - model-server clusters are STRICT_DNS on the Services named in upstreams.ini: a headless
#     Service gives Envoy one host per ready pod, so host pinning can pick the pod that holds a
#     conversation;
#   - the router cluster is the sidecar's Unix socket {ROUTER_SOCKET}, in an
#     emptyDir volume only the pod's two containers mount: ext_proc is not on the network;
#   - a `probes` listener on 0.0.0.0:{PROBE_PORT} forwards GET /ready and GET /stats/prometheus to
#     the admin interface, which stays on loopback.

"""
    return text.splitlines(keepends=True)


def module_header(ini: Path, output: Path) -> list[str]:
    text = f"""\
# GENERATED by deploy/kubernetes/render.py from deploy/envoy-module.yaml (itself rendered from
# deploy/envoy.yaml by deploy/render_module.py) and {rel(ini)}.
# Do not edit: change those files and run `python3 deploy/kubernetes/render.py`
# (scripts/k8s-check fails while this file is stale).
#
# deploy/envoy-module.yaml for a Kubernetes pod of the kustomization in {rel(output.parent)}/:
# Envoy alone, with the responses-router inside it as a dynamic module (no router sidecar, no
# ext_proc). Envoy runs the `responses-router-envoy` image (Dockerfile, stage `envoy-module`),
# which carries libresponses_router_envoy.so on ENVOY_DYNAMIC_MODULES_SEARCH_PATH and the
# embedding model. The comments below are deploy/envoy-module.yaml's own; the Kubernetes
# differences are marked `k8s:`:
#   - listeners bind 0.0.0.0 (the Service sends traffic to the pod IP);
#   - model-server clusters are STRICT_DNS on the Services named in upstreams.ini: a headless
#     Service gives Envoy one host per ready pod, so host pinning can pick the pod that holds a
#     conversation;
#   - the module reads the routing config from the routing ConfigMap, mounted into Envoy at
#     {ROUTING_MOUNT};
#   - a `probes` listener on 0.0.0.0:{PROBE_PORT} forwards GET /ready and GET /stats/prometheus
#     (where the module's stats are too) to the admin interface, which stays on loopback.

"""
    return text.splitlines(keepends=True)


ROUTING_YAML_LINE = re.compile(r"^(\s*)routing_yaml: (\S+)\s*$")


def mounted_routing(lines: list[str], source: Path) -> list[str]:
    """The module filter's `routing_yaml` pointed at the routing ConfigMap's mount."""
    found = [i for i, line in enumerate(lines) if ROUTING_YAML_LINE.match(line)]
    if len(found) != 1:
        raise RenderError(f"{rel(source)}: expected exactly one `routing_yaml:` line, found {len(found)}")
    i = found[0]
    pad = ROUTING_YAML_LINE.match(lines[i]).group(1)
    return lines[:i] + [
        f"{pad}# k8s: the routing ConfigMap, mounted read-only into Envoy. Its name carries a hash of\n",
        f"{pad}# its content, so a changed routing config is a new ConfigMap and rolls the Deployment;\n",
        f"{pad}# the poll below never sees this file change.\n",
        f"{pad}routing_yaml: {ROUTING_MOUNT}\n",
    ] + lines[i + 1 :]


def module_source_lines() -> list[str]:
    """deploy/envoy-module.yaml, refused when it is stale: it is rendered from deploy/envoy.yaml,
    and a Kubernetes copy of an old rendering would pass every check and still differ."""
    sys.path.insert(0, str(DEPLOY))
    try:
        import render_module  # deploy/render_module.py
    finally:
        sys.path.pop(0)
    try:
        fresh = render_module.render()
    except render_module.RenderError as e:
        raise RenderError(str(e)) from e
    text = MODULE_SOURCE.read_text()
    if text != fresh:
        raise RenderError(f"{rel(MODULE_SOURCE)} is stale: run `python3 deploy/render_module.py` first")
    return text.splitlines(keepends=True)


def render_envoy(ini: Path) -> str:
    form, upstreams = read_upstreams(ini)
    module = form == "module"
    source = MODULE_SOURCE if module else ENVOY_SOURCE
    output = ini.parent / "envoy.yaml"
    lines = module_source_lines() if module else source.read_text().splitlines(keepends=True)

    # The source's own header (its first paragraph of comments) describes the local stack; the
    # generated one replaces it.
    first = 0
    while first < len(lines) and lines[first].startswith("#"):
        first += 1
    while first < len(lines) and not lines[first].strip():
        first += 1
    lines = lines[first:]

    if f"port_value: {PROBE_PORT} " in "".join(lines):
        raise RenderError(f"{rel(source)} already uses port {PROBE_PORT}, the probes listener's")
    admin = index_of(lines, "admin:", source)
    admin_port = None
    for line in lines[admin + 1 : admin + 4]:
        m = LOOPBACK_ADDRESS.match(line)
        if m:
            admin_port = int(m.group(2))
    if admin_port is None:
        raise RenderError(f"{rel(source)}: the admin address is not a loopback `socket_address` line")

    listeners_at = index_of(lines, "  listeners:", source)
    clusters_at = index_of(lines, "  clusters:", source)
    if not listeners_at < clusters_at:
        raise RenderError(f"{rel(source)}: expected `  listeners:` before `  clusters:`")

    listeners = split_items(lines[listeners_at + 1 : clusters_at], "listeners", source)
    clusters = split_items(lines[clusters_at + 1 :], "clusters", source)

    names = [name for name, _ in clusters]
    if module and ROUTER_CLUSTER in names:
        raise RenderError(f"{rel(source)}: has a cluster {ROUTER_CLUSTER}, but the module form runs no router process")
    if not module and ROUTER_CLUSTER not in names:
        raise RenderError(f"{rel(source)}: no cluster named {ROUTER_CLUSTER}")
    if FORM_SECTION in names:
        raise RenderError(f"{rel(source)}: a cluster is named {FORM_SECTION}, the section upstreams.ini reserves")
    model_clusters = [n for n in names if n != ROUTER_CLUSTER]
    missing = [n for n in model_clusters if n not in upstreams]
    unknown = [n for n in upstreams if n not in model_clusters]
    if missing:
        raise RenderError(f"{rel(ini)}: no [section] for the clusters {missing} of {rel(source)}")
    if unknown:
        raise RenderError(f"{rel(ini)}: sections {unknown} are no model-server clusters of {rel(source)}")
    if ADMIN_CLUSTER in names:
        raise RenderError(f"{rel(source)} already has a cluster named {ADMIN_CLUSTER}")

    exposed = [line for name, item in listeners for line in expose_listener(name, item, source)]
    out = lines[: listeners_at + 1] + (mounted_routing(exposed, source) if module else exposed)
    if out[-1].strip():
        out.append("\n")
    out += probe_listener(admin_port)
    out.append(lines[clusters_at])
    for name, item in clusters:
        if name == ROUTER_CLUSTER:
            out += unix_socket_router(item)
        else:
            address, port = upstreams[name]
            out += dns_cluster(name, item, address, port, ini, source)
    out += admin_cluster(admin_port)
    head = module_header(ini, output) if module else header(ini, output)
    return "".join(head + out)


def render_routing() -> str:
    return (
        "# GENERATED by deploy/kubernetes/render.py: deploy/routing.yaml, unchanged below this header,\n"
        "# for the kustomize base (kustomize reads files only inside a kustomization's directory).\n"
        "# Do not edit: change deploy/routing.yaml and run `python3 deploy/kubernetes/render.py`\n"
        "# (scripts/k8s-check fails while this file is stale).\n"
        "\n"
    ) + ROUTING_SOURCE.read_text()


def targets() -> dict[Path, str]:
    """Every generated file and its content."""
    out = {ROUTING_COPY: render_routing(), MTLS_OUTPUT: render_mtls()}
    inis = sorted(HERE.rglob("upstreams.ini"))
    if not inis:
        raise RenderError(f"no upstreams.ini under {rel(HERE)}")
    for ini in inis:
        out[ini.parent / "envoy.yaml"] = render_envoy(ini)
    return out


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    check = argv == ["--check"]
    try:
        rendered = targets()
    except (RenderError, configparser.Error, OSError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    stale = []
    for path, text in rendered.items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if check:
            stale.append(path)
            diff = difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                f"{rel(path)} (committed)", f"{rel(path)} (rendered now)",
            )
            sys.stderr.writelines(diff)
        else:
            path.write_text(text)
            print(f"wrote {rel(path)}")
    if stale:
        names = ", ".join(rel(p) for p in stale)
        print(f"render.py: stale: {names}\n  run: python3 deploy/kubernetes/render.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
