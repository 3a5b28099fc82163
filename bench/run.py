#!/usr/bin/env python3
"""Trellis benchmarks, side by side with direct traffic, Envoy, nginx and haproxy in one run.

Started by bench/run.sh (which installs the tools and builds Trellis in release mode). The
sidecars are the `trellis-proxy` binary (the sidecar alone, as a sidecar image ships it); the
control plane is `trellis control`.
Everything listens on 127.0.0.1 with ports picked free at start; every process started here is
stopped by PID. The proxy under test is pinned to CPU 0; backend and load generators to CPU 1.

Scenarios, interleaved round by round:
  direct       load generator -> backend (the limit)
  one hop      -> proxy -> backend, HTTP/1.1 keep-alive both sides:
               trellis sidecar, envoy (--concurrency 1), nginx (1 worker), haproxy (1 thread)
  mesh path    -> client proxy -> server proxy -> backend: trellis pair, envoy pair (plaintext);
               trellis mtls pair, envoy mtls pair (mTLS 1.3 with certificates from the Trellis CA)
  h2           h2load (h2c, prior knowledge) -> proxy -> backend (h2c); every proxy's h2 listener
               is a process of its own, so h2 buffers never show in the HTTP/1.1 memory figures

Figures: max req/s (wrk, closed loop), latency p50/p90/p99/p99.9 at fixed rates (oha, open loop,
corrected for coordinated omission), proxy CPU per request, proxy RSS idle and after load.
Results go to docs/BENCHMARKS.md (the section between the BENCH markers) and bench/out/.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY_CPU = "0"
LOAD_CPU = "1"
BODY = "hello world!\n"  # 13 bytes
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The sidecar's completed TLS handshakes counter (label: direction).
TRELLIS_HANDSHAKE_METRIC = "trellis_tls_handshakes_total"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling for a port to open, not synchronisation by sleep
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {deadline_s}s")


class Procs:
    """Every process the benchmark starts, stopped by PID at the end."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], cpu: str, stdout=None) -> subprocess.Popen:
        log = open(os.path.join(self.workdir, f"{name}.log"), "ab")
        p = subprocess.Popen(
            ["taskset", "-c", cpu, *cmd],
            stdout=stdout if stdout is not None else log,
            stderr=log,
            start_new_session=True,
        )
        p.bench_name = name
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        # The proxies first, then what they depend on (the control plane, the backend), so a
        # draining sidecar still reaches both.
        last = {"trellis-control", "backend"}
        for group in ([p for p in self.procs if p.bench_name not in last],
                      [p for p in self.procs if p.bench_name in last]):
            for p in reversed(group):
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            for p in reversed(group):
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs.clear()


def proc_tree(pid: int) -> list[int]:
    """pid and its descendants (nginx/haproxy fork workers)."""
    out = [pid]
    try:
        children = subprocess.check_output(["pgrep", "-P", str(pid)], text=True).split()
    except subprocess.CalledProcessError:
        children = []
    for c in children:
        out.extend(proc_tree(int(c)))
    return out


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and kernel CPU seconds of `pids` (utime, stime)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except FileNotFoundError:
            pass
    return user / CLK_TCK, system / CLK_TCK


def rss_mib(pids: list[int], field: str = "VmRSS") -> float:
    """`field` of /proc/<pid>/status summed over `pids`: VmRSS, or RssAnon (private memory)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def core_busy_seconds(cpu: str) -> float:
    """Time `cpu` spent running tasks (user, nice, system) or stolen by the hypervisor. Interrupt
    and softirq time is left out: most of it is the proxy's own loopback traffic, which the
    kernel does not charge to the proxy, so counting it would report the proxy's own work as
    foreign load."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return (v[0] + v[1] + v[2] + v[7]) / CLK_TCK
    return 0.0


# ---- configurations of the peers -------------------------------------------------------------


def nginx_backend_conf(port_h1: int, port_h2: int, workdir: str) -> str:
    return f"""
daemon off; worker_processes 1; pid {workdir}/nginx-backend.pid; error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  server {{ listen 127.0.0.1:{port_h1} backlog=4096; location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }} }}
  server {{ listen 127.0.0.1:{port_h2} http2 backlog=4096; location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }} }}
}}
"""


def nginx_proxy_conf(port: int, h2: bool, backend: int, workdir: str) -> str:
    """nginx as the one hop: HTTP/1.1 downstream on `port`, or h2c (prior knowledge) when `h2`."""
    listen = f"listen 127.0.0.1:{port}{' http2' if h2 else ''} backlog=4096;"
    return f"""
daemon off; worker_processes 1; pid {workdir}/nginx-proxy-{port}.pid; error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; keepalive_requests 1000000; }}
  server {{
    {listen}
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


def haproxy_conf(port: int, h2: bool, backend: int) -> str:
    """haproxy as the one hop: HTTP/1.1 downstream on `port`, or h2c when `h2`."""
    return f"""
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}{' proto h2' if h2 else ''}
  default_backend be
backend be
  server b1 127.0.0.1:{backend}
"""


def envoy_tls(kind: str, pki: dict, peer_id: str | None = None) -> dict:
    """An Envoy TLS transport socket with the Trellis-issued certificate in `pki` (TLS 1.3 only,
    as Trellis sidecars use): `down` for a listener (client certificate required), `up` for a
    cluster (ALPN h2, the server's SPIFFE ID checked)."""
    common = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [{"certificate_chain": {"filename": pki["cert"]},
                              "private_key": {"filename": pki["key"]}}],
        "validation_context": {"trusted_ca": {"filename": pki["bundle"]}},
    }
    if kind == "down":
        common["alpn_protocols"] = ["h2", "http/1.1"]
        ctx = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
               "require_client_certificate": True, "common_tls_context": common}
    else:
        common["alpn_protocols"] = ["h2"]
        common["validation_context"]["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": peer_id}}]
        ctx = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
               "sni": "mesh-backend", "common_tls_context": common}
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def envoy_conf(admin: int, listen: int, upstream: int, listener_tls=None, upstream_tls=None) -> str:
    conf = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "in",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "codec_type": "AUTO",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}},
                }]}]},
            }],
        },
    }
    if listener_tls:
        conf["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = listener_tls
    if upstream_tls:
        cluster = conf["static_resources"]["clusters"][0]
        cluster["transport_socket"] = upstream_tls
        # HTTP/2 between the proxies, as between Trellis sidecars.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }}
    return json.dumps(conf)


def issue_cert(control: str, service: str, workdir: str) -> dict:
    """A key made here and a leaf signed by the Trellis CA for `service` (join token + CSR, as a
    sidecar does), written as PEM files for Envoy."""
    tok = api(control, "POST", "/v1/tokens", {"service": service, "ttl_ms": 86400000})
    key, csr = os.path.join(workdir, f"{service}.key"), os.path.join(workdir, f"{service}.csr")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", key], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", f"/CN={service}", "-out", csr],
                   check=True, capture_output=True)
    req = urllib.request.Request(control + "/v1/certificates",
                                 data=json.dumps({"csr": open(csr).read()}).encode(), method="POST",
                                 headers={"content-type": "application/json",
                                          "authorization": f"Bearer {tok['token']}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        signed = json.loads(r.read())
    out = {"key": key, "cert": os.path.join(workdir, f"{service}.crt"),
           "bundle": os.path.join(workdir, "bundle.pem"), "spiffe_id": signed["spiffe_id"]}
    open(out["cert"], "w").write(signed["certificate_chain"])
    open(out["bundle"], "w").write(signed["trust_bundle"])
    return out


# ---- the setup -------------------------------------------------------------------------------


class Target:
    """One way of reaching the backend: the port to load, a Host header, the proxy PIDs."""

    def __init__(self, name, port, host=None, h2_port=None, pids=None, features="", peer="envoy",
                 handshakes=None, h2_pids=None, h2_host=None):
        self.name, self.port, self.host, self.h2_port = name, port, host, h2_port
        self.pids = pids or []
        # HTTP/2 downstream goes to a process of its own (the same program and configuration, an
        # h2c listener), for every proxy alike: the buffers an h2 run leaves in a process stay in
        # its RSS, and would otherwise show in the HTTP/1.1 figures of the rounds after it.
        self.h2_pids, self.h2_host = h2_pids or [], h2_host
        self.features = features
        # The Envoy setup this one is compared with, and a function counting the TLS handshakes
        # its server side has done (mTLS pairs).
        self.peer, self.handshakes = peer, handshakes
        self.rss_idle = rss_mib(self.all_pids())

    def all_pids(self):
        return [c for p in self.pids for c in proc_tree(p)]

    def all_h2_pids(self):
        return [c for p in self.h2_pids for c in proc_tree(p)]


def read_ready(p: subprocess.Popen, deadline_s: float = 30.0) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"process {p.args} exited before its ready line")
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "ready" in msg:
            return msg
    raise RuntimeError("no ready line")


def api(control: str, method: str, path: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(control + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


def wait_proxy_knows(admin: str, service: str, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://{admin}/config_dump", timeout=2) as r:
                dump = r.read().decode()
            if f'"{service}"' in dump and "127.0.0.1" in dump:
                with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as r2:
                    if r2.status == 200:
                        return
        except OSError:
            pass
        time.sleep(0.05)  # polling for the config to arrive
    raise RuntimeError(f"proxy {admin} never learned service {service}")


def setup(procs: Procs, args, workdir: str) -> tuple[list[Target], dict]:
    b1, b2 = free_port(), free_port()
    conf = os.path.join(workdir, "nginx-backend.conf")
    open(conf, "w").write(nginx_backend_conf(b1, b2, workdir))
    procs.start("backend", ["nginx", "-c", conf, "-e", "stderr"], LOAD_CPU)
    wait_port(b1)
    wait_port(b2)
    targets = [Target("direct", b1, h2_port=b2)]

    # Trellis: a control plane (on the load core: it is idle during the runs), the backend
    # registered as service `backend` (h1) and `backend-h2` (h2c), a sidecar as the one hop,
    # and a client/server sidecar pair for the mesh path.
    data = tempfile.mkdtemp(prefix="trellis-bench-", dir=workdir)
    cp = procs.start("trellis-control", [args.trellis, "control", "--data-dir", data,
                                         "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
                     LOAD_CPU, stdout=subprocess.PIPE)
    ready = read_ready(cp)
    control = "http://" + ready["http"]
    for svc, port, proto in (("backend", b1, "http"), ("backend-h2", b2, "http2")):
        api(control, "POST", "/v1/instances", {"service": svc, "id": f"{svc}-1", "address": "127.0.0.1",
                                               "port": port, "protocol": proto, "ttl_ms": 3600000})

    def sidecar(name, service, app_port, extra=(), token=None, binary=None):
        if args.train:
            # Stopped well inside Procs.stop_all's wait, so each writes its profile on exit.
            extra = (*extra, "--drain-timeout", "1s")
        if token:
            extra = (*extra, "--join-token", api(control, "POST", "/v1/tokens", {"service": service})["token"])
        p = procs.start(name, [binary or args.proxy, "--log", "warn", "--service", service,
                               "--app-port", str(app_port), "--control", control,
                               "--admin-addr", "127.0.0.1:0", "--outbound-addr", "127.0.0.1:0",
                               "--inbound-addr", "127.0.0.1:0", "--ttl", "1h", *extra],
                        PROXY_CPU, stdout=subprocess.PIPE)
        return p, read_ready(p)

    # The same backend as service `backend-r`, whose callers apply every failure-recovery
    # layer (timeouts, retries with a budget, outlier detection, circuit breakers).
    api(control, "POST", "/v1/instances", {"service": "backend-r", "id": "backend-r-1",
                                           "address": "127.0.0.1", "port": b1, "protocol": "http",
                                           "ttl_ms": 3600000})
    api(control, "POST", "/v1/resources", {"apiVersion": "trellis.dev/v1alpha1", "kind": "TrafficPolicy",
                                          "metadata": {"name": "backend-r"},
                                          "spec": {"targetRef": {"name": "backend-r"},
                                                   "timeouts": {"request": "5s", "backendRequest": "2s"},
                                                   "retries": {"attempts": 2},
                                                   "outlierDetection": {"consecutive5xx": 5},
                                                   "circuitBreakers": {"maxRequests": 1024}}})
    one, one_ready = sidecar("trellis-sidecar", "bench-client", b1)
    wait_proxy_knows(one_ready["admin"], "backend")
    port_of = lambda addr: int(addr.rsplit(":", 1)[1])  # noqa: E731
    one_h2, one_h2_ready = sidecar("trellis-sidecar-h2", "bench-client-h2", b2)
    wait_proxy_knows(one_h2_ready["admin"], "backend-h2")
    targets.append(Target("trellis", port_of(one_ready["outbound"]), host="backend", pids=[one.pid],
                          features="routing + load balancing + metrics; no TLS",
                          h2_port=port_of(one_h2_ready["outbound"]), h2_pids=[one_h2.pid],
                          h2_host="backend-h2"))
    # --latency: direct, trellis, nginx and haproxy only (LATENCY_POOL), nothing else running.
    latency_only = getattr(args, "latency", False)
    if not latency_only:
        # Its own sidecar, so that each one's CPU and memory are its own.
        res, res_ready = sidecar("trellis-sidecar-r", "bench-client-r", b1)
        wait_proxy_knows(res_ready["admin"], "backend-r")
        targets.append(Target("trellis resilience", port_of(res_ready["outbound"]), host="backend-r",
                              pids=[res.pid],
                              features="as trellis, plus request/per-try timeouts, 2 retries with a budget, "
                                       "outlier detection, circuit breaker"))

    # The sidecar built without profile-guided optimisation (plain `cargo build --release`), one
    # hop: what a user building from source without bench/pgo.sh runs.
    if args.proxy_plain and not latency_only:
        plain, plain_ready = sidecar("trellis-sidecar-no-pgo", "bench-client-np", b1, binary=args.proxy_plain)
        wait_proxy_knows(plain_ready["admin"], "backend")
        targets.append(Target("trellis no-pgo", port_of(plain_ready["outbound"]), host="backend", pids=[plain.pid],
                              features="as trellis; release build without PGO"))

    # Envoy, nginx and haproxy, one hop: for each, one process for HTTP/1.1 and one for h2c,
    # the same program and configuration (Envoy's codec is AUTO, so its config is the same).
    def one_hop(name, h2, ext, conf_of, cmd_of):
        name = f"{name}-h2" if h2 else name
        port = free_port()
        conf = os.path.join(workdir, f"{name}.{ext}")
        open(conf, "w").write(conf_of(port, h2))
        p = procs.start(name, cmd_of(conf, h2), PROXY_CPU)
        wait_port(port)
        return port, p

    peers = [
        ("envoy", "json", "router only, default stats",
         lambda port, h2: envoy_conf(free_port(), port, b1),
         lambda conf, h2: [args.envoy, "-c", conf, "--concurrency", "1", "--base-id", "16" if h2 else "11",
                           "--log-level", "warn"]),
        ("nginx", "conf", "proxy_pass, upstream keepalive",
         lambda port, h2: nginx_proxy_conf(port, h2, b1, workdir),
         lambda conf, h2: ["nginx", "-c", conf, "-e", "stderr"]),
        ("haproxy", "cfg", "mode http, http-reuse always",
         lambda port, h2: haproxy_conf(port, h2, b1),
         lambda conf, h2: ["haproxy", "-f", conf, "-db"]),
    ]
    for name, ext, features, conf_of, cmd_of in peers if not args.train else []:
        if latency_only and name not in LATENCY_POOL:
            continue
        port, p = one_hop(name, False, ext, conf_of, cmd_of)
        port_h2, p_h2 = one_hop(name, True, ext, conf_of, cmd_of)
        targets.append(Target(name, port, pids=[p.pid], features=features, h2_port=port_h2, h2_pids=[p_h2.pid]))

    if latency_only:
        return targets, {"control": control}

    # Mesh path: Trellis pair. The server sidecar fronts the backend as service `mesh-backend`,
    # PERMISSIVE and without certificates: plaintext HTTP/1.1 between the sidecars.
    api(control, "POST", "/v1/resources", {"apiVersion": "trellis.dev/v1alpha1", "kind": "Service",
                                          "metadata": {"name": "mesh-backend"},
                                          "spec": {"mtls": {"mode": "PERMISSIVE"}}})
    srv, srv_ready = sidecar("trellis-server-sidecar", "mesh-backend", b1)
    cli, cli_ready = sidecar("trellis-client-sidecar", "mesh-client", b1)
    wait_proxy_knows(cli_ready["admin"], "mesh-backend")
    targets.append(Target("trellis pair", port_of(cli_ready["outbound"]), host="mesh-backend",
                          pids=[cli.pid, srv.pid], features="plaintext h1 between sidecars",
                          peer="envoy pair"))

    # Mesh path with mTLS (STRICT, the default): both sidecars hold certificates from the mesh CA.
    tsrv, tsrv_ready = sidecar("trellis-mtls-server", "mesh-backend-tls", b1, token=True)
    tcli, tcli_ready = sidecar("trellis-mtls-client", "mesh-client-tls", b1, token=True)
    wait_proxy_knows(tcli_ready["admin"], "mesh-backend-tls")
    targets.append(Target("trellis mtls pair", port_of(tcli_ready["outbound"]), host="mesh-backend-tls",
                          pids=[tcli.pid, tsrv.pid], peer="envoy mtls pair",
                          features="mTLS 1.3 (SPIFFE checks), h2 between sidecars",
                          handshakes=lambda: trellis_handshakes(tsrv_ready["admin"])))

    if args.train:
        return targets, {"control": control}

    # Mesh path: Envoy pair.
    es_port, es_admin, ec_port, ec_admin = free_port(), free_port(), free_port(), free_port()
    conf_s = os.path.join(workdir, "envoy-server.json")
    conf_c = os.path.join(workdir, "envoy-client.json")
    open(conf_s, "w").write(envoy_conf(es_admin, es_port, b1))
    open(conf_c, "w").write(envoy_conf(ec_admin, ec_port, es_port))
    es = procs.start("envoy-server", [args.envoy, "-c", conf_s, "--concurrency", "1", "--base-id", "12",
                                      "--log-level", "warn"], PROXY_CPU)
    ec = procs.start("envoy-client", [args.envoy, "-c", conf_c, "--concurrency", "1", "--base-id", "13",
                                      "--log-level", "warn"], PROXY_CPU)
    wait_port(es_port)
    wait_port(ec_port)
    targets.append(Target("envoy pair", ec_port, pids=[ec.pid, es.pid], features="plaintext h1 between proxies",
                          peer="envoy pair"))

    # Mesh path: Envoy mTLS pair, with certificates issued by the same Trellis CA.
    srv_pki = issue_cert(control, "envoy-server", workdir)
    cli_pki = issue_cert(control, "envoy-client", workdir)
    ms_port, ms_admin, mc_port, mc_admin = free_port(), free_port(), free_port(), free_port()
    conf_s = os.path.join(workdir, "envoy-mtls-server.json")
    conf_c = os.path.join(workdir, "envoy-mtls-client.json")
    open(conf_s, "w").write(envoy_conf(ms_admin, ms_port, b1, listener_tls=envoy_tls("down", srv_pki)))
    open(conf_c, "w").write(envoy_conf(mc_admin, mc_port, ms_port,
                                       upstream_tls=envoy_tls("up", cli_pki, srv_pki["spiffe_id"])))
    ms = procs.start("envoy-mtls-server", [args.envoy, "-c", conf_s, "--concurrency", "1", "--base-id", "14",
                                           "--log-level", "warn"], PROXY_CPU)
    mc = procs.start("envoy-mtls-client", [args.envoy, "-c", conf_c, "--concurrency", "1", "--base-id", "15",
                                           "--log-level", "warn"], PROXY_CPU)
    wait_port(ms_port)
    wait_port(mc_port)
    targets.append(Target("envoy mtls pair", mc_port, pids=[mc.pid, ms.pid], peer="envoy mtls pair",
                          features="mTLS 1.3 (SAN check), h2 between proxies",
                          handshakes=lambda: envoy_handshakes(ms_admin)))

    for t in targets:
        t.rss_idle = rss_mib(t.all_pids())
        t.h2_rss_idle = rss_mib(t.all_h2_pids())
    return targets, {"control": control}


def envoy_handshakes(admin: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=ssl.handshake$", timeout=5) as r:
        return sum(int(line.rsplit(":", 1)[1]) for line in r.read().decode().splitlines() if ":" in line)


def trellis_handshakes(admin: str) -> int:
    """Inbound mTLS handshakes completed by a sidecar (its Prometheus metrics)."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith(TRELLIS_HANDSHAKE_METRIC) and 'direction="inbound"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


# ---- load ------------------------------------------------------------------------------------


def run_load(cmd: list[str]) -> str:
    return subprocess.run(["taskset", "-c", LOAD_CPU, *cmd], check=True, capture_output=True,
                          text=True, timeout=600).stdout


def measure(t: Target, fn, h2=False):
    pids = t.all_h2_pids() if h2 else t.all_pids()
    (u0, s0), busy0 = cpu_split(pids), core_busy_seconds(PROXY_CPU)
    result = fn()
    (u1, s1), busy1 = cpu_split(pids), core_busy_seconds(PROXY_CPU)
    result["proxy_cpu_s"] = (u1 - u0) + (s1 - s0)
    result["proxy_user_s"] = u1 - u0
    result["proxy_sys_s"] = s1 - s0
    result["core_busy_s"] = busy1 - busy0
    return result


def wrk_max(t: Target, duration: int, conns: int) -> dict:
    hs0 = t.handshakes() if t.handshakes else None
    r = wrk_run(t, duration, conns)
    if hs0 is not None:
        r["handshakes"] = t.handshakes() - hs0
    return r


def wrk_run(t: Target, duration: int, conns: int) -> dict:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency"]
    if t.host:
        cmd += ["-H", f"Host: {t.host}"]
    out = run_load([*cmd, f"http://127.0.0.1:{t.port}/"])
    m = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"requests": int(m.group(1)), "rps": float(rps.group(1)),
            "errors": int(errors.group(1)) if errors else 0, "socket_errors": sock.group(1) if sock else ""}


def oha_rate(t: Target, rate: int, duration: int, conns: int, db: str | None = None) -> dict:
    """oha at a fixed rate. With `db`, oha also writes every succeeded request to that sqlite file
    (after the run, outside the measured stretch), and the result carries their latencies
    (`samples`, microseconds, corrected for coordinated omission like the percentiles) for the
    pooled percentiles; the file is deleted once read."""
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-q", str(rate),
           "--latency-correction", "-c", str(conns)]
    if t.host:
        cmd += ["-H", f"Host: {t.host}"]
    if db:
        cmd += ["--db-url", db]
    out = json.loads(run_load([*cmd, f"http://127.0.0.1:{t.port}/"]))
    pct = out["latencyPercentiles"]
    status = out.get("statusCodeDistribution", {})
    ok = sum(v for k, v in status.items() if k.startswith("2"))
    total = sum(status.values())
    r = {"p50": pct["p50"] * 1e6, "p90": pct["p90"] * 1e6, "p99": pct["p99"] * 1e6,
         "p999": pct["p99.9"] * 1e6, "requests": total, "errors": total - ok}
    if db:
        with contextlib.closing(sqlite3.connect(db)) as c:
            r["samples"] = [d * 1e6 for (d,) in c.execute("SELECT duration FROM oha")]
        os.unlink(db)
    return r


def h2load_max(t: Target, duration: int, conns: int) -> dict:
    port = t.h2_port or t.port
    cmd = ["h2load", "-c", str(conns), "-m", "10", "-t", "1", "-D", str(duration)]
    host = t.h2_host or t.host
    if host:
        cmd += ["-H", f":authority: {host}"]
    out = run_load([*cmd, f"http://127.0.0.1:{port}/"])
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    return {"rps": float(m.group(1)) if m else 0.0,
            "requests": int(done.group(1)) if done else 0,
            "errors": (int(done.group(3)) + int(done.group(4))) if done else -1}


# ---- report ----------------------------------------------------------------------------------


def med(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def fmt(v, unit="", digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}{unit}"


def ratio(v, base):
    if v is None or not base:
        return "-"
    return f"{v / base:.2f}x"


ONE_HOP = ("trellis", "trellis no-pgo", "trellis resilience", "nginx", "haproxy", "envoy")
TRELLIS_BUILDS = ("trellis", "trellis no-pgo")
# The one-hop proxies of the short rotated rounds after the main ones.
SHORT_ROUNDS = ("trellis", "trellis no-pgo", "nginx", "haproxy")
# Targets whose fixed-rate runs also keep every request's latency, and that get latency runs in
# the short rounds too: their percentiles are then also taken over all those requests pooled.
LATENCY_POOL = ("direct", "trellis", "nginx", "haproxy")


def per_req_us(m: dict, key: str = "proxy_cpu_s") -> float:
    return m[key] / max(m["requests"], 1) * 1e6


def one_hop_rounds(rounds: list[dict], title: str, note: str) -> list[str]:
    """CPU per request of the one-hop proxies round by round (each round: name -> measurement),
    and each Trellis build's as a ratio to nginx's and haproxy's of the same round: the machine's
    speed drifts between rounds, so a ratio within a round is steadier than a ratio of medians."""
    if not rounds:
        return []
    present = set(rounds[0])
    cols = [n for n in ONE_HOP if n in present]
    builds = [b for b in TRELLIS_BUILDS if b in present]
    pairs = [(b, peer) for b in builds for peer in ("nginx", "haproxy") if peer in present]
    if not builds or not pairs:
        return []
    lines = ["", f"### {title}", "", note, "",
             "| round | " + " | ".join(cols) + " | " + " | ".join(f"{b} / {p}" for b, p in pairs) + " |",
             "|---|" + "---|" * (len(cols) + len(pairs))]
    ratios = {pair: [] for pair in pairs}
    for i, r in enumerate(rounds):
        row = {n: per_req_us(r[n]) for n in cols}
        for b, peer in pairs:
            ratios[(b, peer)].append(row[b] / row[peer])
        lines.append(f"| {i + 1} | " + " | ".join(fmt(row[n], " us", 1) for n in cols) + " | "
                     + " | ".join(f"{ratios[pair][-1]:.2f}" for pair in pairs) + " |")
    lines.append("")
    lines.append("Median of the per-round ratios (below 1: less CPU per request than the peer): "
                 + "; ".join(f"{b} / {p} {statistics.median(ratios[(b, p)]):.2f} "
                             f"(below 1 in {sum(x < 1 for x in ratios[(b, p)])} of {len(ratios[(b, p)])} rounds)"
                             for b, p in pairs) + ".")
    return lines


def user_kernel(rounds: list[dict]) -> list[str]:
    """Each one-hop proxy's CPU per request split into user and kernel time (utime and stime)."""
    if not rounds:
        return []
    cols = [n for n in ONE_HOP if n in rounds[0]]
    lines = ["", "### One hop, user and kernel time per request (medians over the rounds above and the short rounds)", "",
             "utime and stime of the proxy's processes over each throughput run, divided by requests. Kernel time "
             "(the TCP/IP work of its four system calls per request, loopback delivery and waking the peer) is "
             "most of every proxy's CPU; user time is the proxy's own code.", "",
             "| target | user | kernel | total | user share |", "|---|---|---|---|---|"]
    for n in cols:
        ms = [r[n] for r in rounds if n in r]
        u = statistics.median(per_req_us(m, "proxy_user_s") for m in ms)
        k = statistics.median(per_req_us(m, "proxy_sys_s") for m in ms)
        t = statistics.median(per_req_us(m) for m in ms)
        lines.append(f"| {n} | {u:.1f} us | {k:.1f} us | {t:.1f} us | {u / (u + k):.0%} |")
    return lines


def keep_samples(pooled: dict, runs: dict, name: str, rate: int, m: dict, run) -> None:
    """Moves a fixed-rate result's per-request `samples` into `pooled` under (name, rate) and
    records that run's p50 and p99 in `runs` under (name, rate, run); a result without samples
    (a target outside LATENCY_POOL) is left alone."""
    if "samples" in m:
        pooled.setdefault((name, rate), []).extend(m.pop("samples"))
        runs[(name, rate, run)] = (m["p50"], m["p99"])


def plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def quantile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank q-quantile of an ascending list."""
    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]


def median_interval(values: list[float]) -> str:
    """The median of `values` and the sign test's interval for it (the widest pair of order
    statistics d(k), d(n-k+1) whose two-sided miss chance is at most 5%), e.g. "+5 [-40, +29]";
    the median alone when there are too few values for such an interval (fewer than 6)."""
    v, n = sorted(values), len(values)
    if not v:
        return "-"
    text = f"{statistics.median(v):+,.0f}"
    k = 0
    while 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n <= 0.05:
        k += 1
    if k == 0:
        return text
    return f"{text} [{v[k - 1]:+,.0f}, {v[n - k]:+,.0f}]"


def pooled_latency(pooled: dict, runs: dict, args, which: str) -> list[str]:
    """Percentiles of the one-hop targets over every request of all their fixed-rate runs
    (`which` says what those runs were, interleaved over the same stretch of time), and run by
    run how often each Trellis p50 and p99 was at or below nginx's and haproxy's in the same
    round."""
    names = [n for n in LATENCY_POOL if any((n, rate) in pooled for rate in args.rates)]
    if "direct" not in names or "trellis" not in names:
        return []
    lines = ["", "### One hop, latency over all runs pooled (microseconds)", "",
             f"Every request of every fixed-rate run of these targets, {which}, "
             "pooled, and the percentiles taken over all of them: steadier than the median of a few runs' "
             "percentiles, as the machine's speed drifts from run to run. Latency-corrected like the tables "
             "above. The last two columns compare run by run: in how many runs trellis's p50 and p99 were at "
             "or below the peer's in the same round, and the median of the per-run differences (trellis minus the "
             "peer) with the sign test's 95% interval for it: an interval that holds 0 means these "
             "runs cannot tell the two apart.", "",
             "| rate | target | requests | p50 | p90 | p99 | p99.9 | added p50 / p99 vs direct | "
             "runs with trellis p50 / p99 at or below it | trellis minus it per run, p50 / p99 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rate in args.rates:
        qs = {}
        for n in names:
            v = sorted(pooled.get((n, rate), []))
            if v:
                qs[n] = (len(v), *(quantile(v, q) for q in (0.5, 0.9, 0.99, 0.999)))
        if "direct" not in qs:
            continue
        d50, d99 = qs["direct"][1], qs["direct"][3]
        for n, (count, p50, p90, p99, p999) in qs.items():
            added = "-" if n == "direct" else f"+{p50 - d50:,.0f} / +{p99 - d99:,.0f}"
            paired, diffs = "-", "-"
            if n not in ("direct", "trellis"):
                both = [k[2] for k in runs if k[:2] == ("trellis", rate) and (n, rate, k[2]) in runs]
                d = [[runs[("trellis", rate, r)][i] - runs[(n, rate, r)][i] for r in both] for i in (0, 1)]
                paired = f"{sum(x <= 0 for x in d[0])} / {sum(x <= 0 for x in d[1])} of {len(both)}"
                diffs = " / ".join(median_interval(x) for x in d)
            lines.append(f"| {rate:,} | {n} | {count:,} | {fmt(p50)} | {fmt(p90)} | {fmt(p99)} | {fmt(p999)} | "
                         f"{added} | {paired} | {diffs} |")
    return lines


def report(results: dict, duel: list[dict], targets: list[Target], args, notes: list[str],
           pooled_lines: list[str]) -> str:
    names = [t.name for t in targets]
    by = {n: results[n] for n in names}
    direct_rps = med([r["max"]["rps"] for r in by["direct"]])[0]
    lines = []
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"Run: {date}; {args.rounds} rounds, {args.duration} s per measurement, "
                 f"{args.conns} connections, {len(BODY)}-byte body. Proxy under test pinned to CPU {PROXY_CPU}; "
                 f"backend (nginx, 1 worker) and load generators (wrk, oha, h2load) pinned to CPU {LOAD_CPU}. "
                 f"Medians over rounds, min–max in brackets.")
    lines.append("")
    lines.append(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}. "
                 f"Versions: {versions(args)}.")
    lines.append("")
    lines.append("### Maximum throughput, HTTP/1.1 keep-alive (wrk, closed loop)")
    lines.append("")
    lines.append("Ratios in parentheses are to the Envoy setup of the same shape in this run (Envoy for one "
                 "hop, the Envoy pair for the pairs).")
    lines.append("")
    lines.append("| target | req/s | vs direct | vs Envoy | proxy CPU per request | RSS idle -> after load | peak RSS (VmHWM) | private (RssAnon) after load | errors | features on |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")

    def per_request(rs, key="max"):
        return med([per_req_us(r[key]) for r in rs])[0]

    cpu_of = {t.name: per_request(by[t.name]) if t.pids else None for t in targets}
    rss_of = {t.name: med([r["rss_after"] for r in by[t.name]])[0] if t.pids else None for t in targets}
    anon_of = {t.name: med([r["anon_after"] for r in by[t.name]])[0] if t.pids else None for t in targets}
    peak_of = {t.name: max(r["peak_after"] for r in by[t.name]) if t.pids else None for t in targets}
    for t in targets:
        rs = by[t.name]
        rps, lo, hi = med([r["max"]["rps"] for r in rs])
        errs = sum(r["max"]["errors"] for r in rs)
        base = med([r["max"]["rps"] for r in by[t.peer]])[0]
        vs = (lambda v, of: f" ({ratio(v, of[t.peer])})" if v is not None else "")  # noqa: E731
        lines.append(f"| {t.name} | {fmt(rps)} [{fmt(lo)}–{fmt(hi)}] | {ratio(rps, direct_rps)} | {ratio(rps, base)} | "
                     f"{fmt(cpu_of[t.name], ' us', 1)}{vs(cpu_of[t.name], cpu_of)} | "
                     f"{fmt(t.rss_idle, ' MiB', 1) if t.pids else '-'} -> {fmt(rss_of[t.name], ' MiB', 1)}{vs(rss_of[t.name], rss_of)} | "
                     f"{fmt(peak_of[t.name], ' MiB', 1)} | "
                     f"{fmt(anon_of[t.name], ' MiB', 1)}{vs(anon_of[t.name], anon_of)} | {errs} | {t.features or '-'} |")
    main_rounds = [{n: by[n][i]["max"] for n in ONE_HOP if n in by} for i in range(len(by["direct"]))]
    lines += one_hop_rounds(main_rounds, "One hop, round by round (proxy CPU per request in the throughput runs)",
                            f"The wrk runs of the {len(main_rounds)} rounds above ({args.duration} s each).")
    lines += one_hop_rounds(duel, "One hop, short interleaved rounds (proxy CPU per request)",
                            f"After the main rounds: wrk for {args.duel_duration} s on each one-hop proxy in turn, "
                            f"{len(duel)} rounds, the order rotated every round, so that each proxy's runs spread "
                            f"over the same stretch of time.")
    lines += user_kernel(main_rounds + duel)
    for rate in args.rates:
        lines.append("")
        lines.append(f"### Latency at {rate:,} req/s (oha, open loop, latency-corrected), microseconds")
        lines.append("")
        lines.append("| target | p50 | p90 | p99 | p99.9 | added p50 / p99 vs direct | p50 / p99 vs direct | p50 / p99 vs Envoy | proxy CPU per request | errors |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")

        def pct(name, k):
            return med([r[f"rate{rate}"][k] for r in by[name]])[0]

        d50, d99 = pct("direct", "p50"), pct("direct", "p99")
        for t in targets:
            rs = by[t.name]
            vals = {k: med([r[f"rate{rate}"][k] for r in rs]) for k in ("p50", "p90", "p99", "p999")}
            errs = sum(r[f"rate{rate}"]["errors"] for r in rs)
            p50, p99 = vals["p50"][0], vals["p99"][0]
            added = "-" if t.name == "direct" else f"+{p50 - d50:,.0f} / +{p99 - d99:,.0f}"
            vs_direct = "-" if t.name == "direct" else f"{ratio(p50, d50)} / {ratio(p99, d99)}"
            vs_envoy = ("-" if t.name == "direct"
                        else f"{ratio(p50, pct(t.peer, 'p50'))} / {ratio(p99, pct(t.peer, 'p99'))}")
            cells = " | ".join(f"{fmt(v[0])} [{fmt(v[1])}–{fmt(v[2])}]" for v in vals.values())
            cpu = fmt(per_request(rs, f"rate{rate}"), " us", 1) if t.pids else "-"
            lines.append(f"| {t.name} | {cells} | {added} | {vs_direct} | {vs_envoy} | {cpu} | {errs} |")
    lines += pooled_lines
    lines.append("")
    lines.append("### HTTP/2 downstream (h2load, h2c prior knowledge, 10 streams per connection)")
    lines.append("")
    lines.append("| target | req/s | vs direct | vs Envoy | vs nginx | proxy CPU per request | RSS idle -> after load | errors |")
    lines.append("|---|---|---|---|---|---|---|---|")
    h2_direct = med([r["h2"]["rps"] for r in by["direct"] if "h2" in r])[0]
    h2_nginx = med([r["h2"]["rps"] for r in by["nginx"] if "h2" in r])[0]
    h2_envoy = med([r["h2"]["rps"] for r in by["envoy"] if "h2" in r])[0]
    h2_envoy_cpu = per_request(by["envoy"], "h2")
    h2_envoy_rss = med([r["h2_rss_after"] for r in by["envoy"]])[0]
    for t in targets:
        rs = [r for r in by[t.name] if "h2" in r]
        if not rs:
            continue
        rps, lo, hi = med([r["h2"]["rps"] for r in rs])
        errs = sum(r["h2"]["errors"] for r in rs)
        cpu = per_request(rs, "h2") if t.h2_pids else None
        rss_after = med([r["h2_rss_after"] for r in rs])[0] if t.h2_pids else None
        rss = (f"{fmt(t.h2_rss_idle, ' MiB', 1)} -> {fmt(rss_after, ' MiB', 1)} ({ratio(rss_after, h2_envoy_rss)})"
               if t.h2_pids else "-")
        cpu_cell = f"{fmt(cpu, ' us', 1)} ({ratio(cpu, h2_envoy_cpu)})" if cpu is not None else "-"
        lines.append(f"| {t.name} | {fmt(rps)} [{fmt(lo)}–{fmt(hi)}] | {ratio(rps, h2_direct)} | {ratio(rps, h2_envoy)} | "
                     f"{ratio(rps, h2_nginx)} | {cpu_cell} | {rss} | {errs} |")
    tls = [t for t in targets if t.handshakes]
    if tls:
        lines.append("")
        lines.append("### TLS handshakes on the server side of the mTLS pairs, per 1,000 requests (wrk runs)")
        lines.append("")
        lines.append("| target | handshakes per 1,000 requests |")
        lines.append("|---|---|")
        for t in tls:
            per = [r["max"]["handshakes"] / max(r["max"]["requests"], 1) * 1000 for r in by[t.name]
                   if "handshakes" in r["max"]]
            lines.append(f"| {t.name} | {fmt(med(per)[0], '', 2)} |")
    if notes:
        lines.append("")
        lines.append("Disturbances noted during the run:")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def versions(args, latency_only: bool = False) -> str:
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - a missing version string is not fatal
            return "?"
    def envoy():
        v = re.search(r"/(\d+\.\d+\.\d+)/", first_line([args.envoy, "--version"]) + "/")
        return "envoy " + (v.group(1) if v else "?")
    tools = {
        "trellis": lambda: "trellis " + first_line([args.trellis, "--version"]).split()[-1]
        + f" (sidecar{'' if latency_only else 's'}: {os.path.basename(args.proxy)}, {args.build})",
        "envoy": envoy,
        "nginx": lambda: first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": lambda: "haproxy " + first_line(["haproxy", "-v"]).split()[2],
        "wrk": lambda: first_line(["wrk", "--version"]).split()[1],
        "oha": lambda: "oha " + first_line(["oha", "--version"]).split()[-1],
        "h2load": lambda: first_line(["h2load", "--version"]),
    }
    # --latency runs neither Envoy nor wrk nor h2load.
    used = ("trellis", "nginx", "haproxy", "oha") if latency_only else tools
    return ", ".join(tools[name]() for name in used)


def write_doc(section: str, marker: str = "BENCH") -> None:
    path = os.path.join(ROOT, "docs", "BENCHMARKS.md")
    begin, end = f"<!-- {marker}:BEGIN -->", f"<!-- {marker}:END -->"
    doc = open(path).read() if os.path.exists(path) else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    open(path, "w").write(f"{head}{begin}\n{section}{end}{tail}")


def train(args) -> int:
    """The PGO training run: every Trellis sidecar shape of the benchmark (one hop plain and with
    failure recovery, HTTP/2 downstream, the plaintext and the mTLS pair) under closed-loop and
    fixed-rate load. The instrumented sidecars write their profiles when they exit on SIGTERM."""
    out = os.path.join(ROOT, "bench", "out")
    os.makedirs(out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="train-", dir=out)
    procs = Procs(workdir)
    failed = []
    try:
        targets, _ = setup(procs, args, workdir)
        short = max(args.duration // 2, 1)
        for t in targets:
            if not t.pids:
                continue
            # A run answered with errors would train the error paths instead of the proxying.
            m = wrk_run(t, args.duration, args.conns)
            r = oha_rate(t, 1000, short, args.conns)
            h2 = h2load_max(t, short, args.conns) if t.h2_pids else None
            if m["errors"] or m["socket_errors"] or r["errors"] or (h2 and h2["errors"]):
                failed.append(f"{t.name}: wrk {m['errors']} non-2xx, socket errors '{m['socket_errors']}'; "
                              f"oha {r['errors']} errors" + (f"; h2load {h2['errors']} errors" if h2 else ""))
            print(f"pgo: trained {t.name}: {m['rps']:,.0f} req/s (instrumented)"
                  + (f", h2 {h2['rps']:,.0f} req/s" if h2 else ""), flush=True)
    finally:
        started = list(procs.procs)
        procs.stop_all()
    # A sidecar killed instead of exiting on SIGTERM writes no profile.
    for p in started:
        if p.returncode != 0:
            failed.append(f"{p.bench_name} exited with {p.returncode} on SIGTERM (log: {workdir}/{p.bench_name}.log)")
    for f in failed:
        print(f"pgo: training failed: {f}", file=sys.stderr)
    return 1 if failed else 0


def latency_main(args) -> int:
    """--latency: the one-hop latency comparison alone, with more paired runs than the full run
    has time for. Only direct, trellis, nginx and haproxy run (and the control plane, idle); each
    round runs oha at each rate on each of them, the order rotated every round, so that every
    target's runs spread over the same stretch of time and each trellis run sits next to its
    peers' at the same rate. Writes the LATENCY section of docs/BENCHMARKS.md."""
    out = os.path.join(ROOT, "bench", "out")
    os.makedirs(out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="latency-", dir=out)
    procs = Procs(workdir)
    started = time.monotonic()
    try:
        targets, _ = setup(procs, args, workdir)
        planned = len(targets) * len(args.rates) * args.rounds * args.duration
        print(f"bench: latency only: {len(targets)} targets, {args.rounds} rounds of oha at "
              f"{', '.join(f'{r:,}' for r in args.rates)} req/s, {args.duration} s each: about "
              f"{planned / 60:.0f} min; logs in {workdir}", flush=True)
        pooled, runs, cpu, notes = {}, {}, {}, []
        db = os.path.join(workdir, "oha.db")
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(targets)
            order = targets[k:] + targets[:k]
            for rate in args.rates:
                for t in order:
                    m = measure(t, lambda: oha_rate(t, rate, args.duration, args.conns, db))
                    keep_samples(pooled, runs, t.name, rate, m, rnd)
                    if t.pids:
                        cpu.setdefault((t.name, rate), []).append(m)
                        foreign = m["core_busy_s"] - m["proxy_cpu_s"]
                        # Tick sampling blurs small amounts: note load beyond a tenth of the core.
                        if foreign > 0.1 * args.duration and foreign > 0.25 * m["proxy_cpu_s"]:
                            notes.append(f"round {rnd}, {t.name} at {rate:,} req/s: {foreign:.2f} s of CPU "
                                         f"{PROXY_CPU} used by other processes or stolen (the proxy: "
                                         f"{m['proxy_cpu_s']:.2f} s)")
                    if m["errors"]:
                        notes.append(f"round {rnd}, {t.name} at {rate:,} req/s: {m['errors']} errors")
            print(f"bench: latency round {rnd}/{args.rounds}: " + "  ".join(
                f"{t.name}@{rate} {runs[(t.name, rate, rnd)][0]:.0f}/{runs[(t.name, rate, rnd)][1]:.0f}"
                for rate in args.rates for t in targets), flush=True)
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            f"Run: {date}; {plural(args.rounds, 'round')}, each of them oha at "
            f"{' and '.join(f'{r:,}' for r in args.rates)} req/s for {args.duration} s on each target, "
            f"the order rotated every round; {args.conns} connections, {len(BODY)}-byte body, latency-corrected. "
            f"Proxy under test pinned to CPU {PROXY_CPU}; backend (nginx, 1 worker) and oha pinned to "
            f"CPU {LOAD_CPU}. Only these targets run.",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}. "
            f"Versions: {versions(args, latency_only=True)}.",
            "",
            "### Run by run (microseconds; medians over the runs, min–max in brackets) and proxy CPU per request",
            "",
            "| rate | target | p50 | p99 | user | kernel | total |",
            "|---|---|---|---|---|---|---|",
        ]
        for rate in args.rates:
            for t in targets:
                mine = [v for k, v in runs.items() if k[:2] == (t.name, rate)]
                p50, p99 = (med([v[i] for v in mine]) for i in (0, 1))
                ms = cpu.get((t.name, rate), [])
                per = [med([per_req_us(m, key) for m in ms])[0] for key in
                       ("proxy_user_s", "proxy_sys_s", "proxy_cpu_s")] if ms else [None] * 3
                lines.append(f"| {rate:,} | {t.name} | {fmt(p50[0])} [{fmt(p50[1])}–{fmt(p50[2])}] | "
                             f"{fmt(p99[0])} [{fmt(p99[1])}–{fmt(p99[2])}] | "
                             + " | ".join(fmt(v, ' us', 1) for v in per) + " |")
        which = f"{plural(args.rounds, 'round')} of {args.duration} s"
        lines += pooled_latency(pooled, runs, args, which)
        if notes:
            lines += ["", "Disturbances and errors:", ""] + [f"- {n}" for n in notes]
        section = "\n".join(lines) + f"\n\nWhole run: {time.monotonic() - started:.0f} s.\n"
        print(section)
        if not args.no_write and not args.quick:
            write_doc(section, "LATENCY")
            print("bench: wrote the LATENCY section of docs/BENCHMARKS.md")
        return 0
    finally:
        procs.stop_all()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trellis", required=True)
    ap.add_argument("--proxy", help="the sidecar binary (default: trellis-proxy next to --trellis)")
    ap.add_argument("--envoy", help="the envoy binary (not needed with --train)")
    ap.add_argument("--proxy-plain", help="a second sidecar binary, the release build without PGO, measured "
                                          "one hop beside the first as `trellis no-pgo`")
    ap.add_argument("--build", default="release", help="how --proxy was built, for the report")
    ap.add_argument("--train", action="store_true",
                    help="PGO training (bench/pgo.sh): drive the Trellis targets only, print no figures")
    ap.add_argument("--latency", action="store_true",
                    help="the one-hop latency comparison alone (direct, trellis, nginx, haproxy): "
                         "more paired runs; default 24 rounds of 3 s")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; 24 with --latency)")
    # 5 s keeps the default run (11 targets, 3 rounds, then the short rounds) inside 15 minutes.
    ap.add_argument("--duration", type=int, help="seconds per measurement (default 5; 3 with --latency)")
    ap.add_argument("--duel-rounds", type=int, default=6,
                    help="short interleaved rounds of the one-hop proxies after the main rounds: wrk, "
                         "and oha at each rate for direct, trellis, nginx and haproxy")
    ap.add_argument("--duel-duration", type=int, default=3)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rates", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s: a smoke run, not for the record")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs/ alone")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 24 if args.latency else 3
    if args.duration is None:
        args.duration = 3 if args.latency else 5
    if args.quick:
        args.rounds, args.duration, args.duel_rounds, args.duel_duration = 1, 3, 2, 2
    if not args.proxy:
        args.proxy = os.path.join(os.path.dirname(os.path.abspath(args.trellis)), "trellis-proxy")
    if not args.envoy and not args.train and not args.latency:
        ap.error("--envoy is needed (except with --train or --latency)")
    if args.train:
        return train(args)
    if os.cpu_count() < 2:
        print("bench: needs 2 CPUs (one for the proxy, one for load)", file=sys.stderr)
        return 1
    if args.latency:
        return latency_main(args)
    out = os.path.join(ROOT, "bench", "out")
    os.makedirs(out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="run-", dir=out)
    procs = Procs(workdir)
    notes = []
    started = time.monotonic()
    try:
        targets, _ = setup(procs, args, workdir)
        print(f"bench: {len(targets)} targets up; proxy on CPU {PROXY_CPU}, load and backend on CPU {LOAD_CPU}; logs in {workdir}",
              flush=True)
        duel_targets = [t for t in targets if t.name in SHORT_ROUNDS or t.name in LATENCY_POOL]
        per_round = sum(1 + len(args.rates) + (1 if t.name == "direct" or t.h2_pids else 0) for t in targets)
        per_short = sum((t.name != "direct") + len(args.rates) * (t.name in LATENCY_POOL) for t in duel_targets)
        planned = per_round * args.rounds * args.duration + per_short * args.duel_rounds * args.duel_duration
        print(f"bench: {per_round * args.rounds} measurements of {args.duration} s: about {planned / 60:.0f} min"
              + (" (over the 15 minutes a run should take: fewer --rounds or a shorter --duration)"
                 if planned > 14.5 * 60 else ""), flush=True)
        results = {t.name: [] for t in targets}
        # (name, rate) -> every request's latency; (name, rate, run) -> that run's p50 and p99.
        pooled, runs = {}, {}

        def db_for(t):
            return os.path.join(workdir, "oha.db") if t.name in LATENCY_POOL else None

        for rnd in range(1, args.rounds + 1):
            for t in targets:
                r = {}
                r["max"] = measure(t, lambda: wrk_max(t, args.duration, args.conns))
                r["rss_after"] = rss_mib(t.all_pids())
                r["anon_after"] = rss_mib(t.all_pids(), "RssAnon")
                r["peak_after"] = rss_mib(t.all_pids(), "VmHWM")
                for rate in args.rates:
                    r[f"rate{rate}"] = measure(t, lambda: oha_rate(t, rate, args.duration, args.conns,
                                                                   db_for(t)))
                    keep_samples(pooled, runs, t.name, rate, r[f"rate{rate}"], rnd)
                if t.name == "direct" or t.h2_pids:
                    r["h2"] = measure(t, lambda: h2load_max(t, args.duration, args.conns), h2=True)
                    r["h2_rss_after"] = rss_mib(t.all_h2_pids())
                if t.pids:
                    for key, v in list(r.items()):
                        if isinstance(v, dict) and v.get("core_busy_s", 0) > 1.0:
                            foreign = v["core_busy_s"] - v["proxy_cpu_s"]
                            if foreign > 0.15 * v["core_busy_s"]:
                                notes.append(f"round {rnd}, {t.name}, {key}: {foreign:.2f} s of CPU {PROXY_CPU} "
                                             f"used by other processes or stolen ({foreign / v['core_busy_s']:.0%})")
                results[t.name].append(r)
                print(f"bench: round {rnd}/{args.rounds} {t.name:13s} max {r['max']['rps']:>9,.0f} req/s  "
                      + "  ".join(f"p99@{rate} {r[f'rate{rate}']['p99']:,.0f}us" for rate in args.rates)
                      + (f"  h2 {r['h2']['rps']:,.0f} req/s" if "h2" in r else ""), flush=True)
        # Short rounds of the one-hop proxies only, the order rotated each round.
        duel = []
        for rnd in range(args.duel_rounds):
            k = rnd % len(duel_targets)
            label = f"s{rnd + 1}"
            row = {}
            for t in duel_targets[k:] + duel_targets[:k]:
                if t.name != "direct":
                    row[t.name] = measure(t, lambda: wrk_run(t, args.duel_duration, args.conns))
                if t.name in LATENCY_POOL:
                    for rate in args.rates:
                        m = oha_rate(t, rate, args.duel_duration, args.conns, db_for(t))
                        keep_samples(pooled, runs, t.name, rate, m, label)
            duel.append(row)
            lat = {(n, rate): runs[(n, rate, label)] for n in LATENCY_POOL for rate in args.rates
                   if (n, rate, label) in runs}
            print(f"bench: short round {rnd + 1}/{args.duel_rounds}: "
                  + "  ".join(f"{n} {per_req_us(m):.1f} us" for n, m in row.items())
                  + "  p50/p99 " + "  ".join(f"{n}@{rate} {p50:.0f}/{p99:.0f}"
                                            for (n, rate), (p50, p99) in lat.items()), flush=True)
        json.dump({"rounds": results, "short_rounds": duel,
                   "latency_runs": [[*k, *v] for k, v in runs.items()]},
                  open(os.path.join(workdir, "results.json"), "w"), indent=1)
        which = (f"{plural(args.rounds, 'main round')} ({args.duration} s each) and "
                 f"{plural(args.duel_rounds, 'short round')} ({args.duel_duration} s each)")
        section = report(results, duel, targets, args, notes, pooled_latency(pooled, runs, args, which))
        section += f"\nWhole run: {time.monotonic() - started:.0f} s.\n"
        print(section)
        if not args.no_write and not args.quick:
            write_doc(section)
            print("bench: wrote docs/BENCHMARKS.md")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
