"""The servers run.py measures: the sample on each transport and option set (JIT or Native AOT build), and nginx as
a reference; how each is started."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from harness import HOST, build, sample  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = HERE / ".bin"
APP_DIR = build.app_dir(BIN)  # the JIT build, .bin/WebApp
AOT_DIR = build.app_dir(BIN, aot=True)  # the Native AOT build, .bin/WebApp-aot


@dataclass
class Variant:
    name: str
    kind: str  # dotnet | nginx
    args: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    description: str = ""
    aot: bool = False  # the sample's Native AOT build (no JIT: no tiering to wait for)
    app_dir: str | None = None  # another published build of the sample (before/after a change, in one run)

    @property
    def transport(self) -> str:
        if self.kind == "nginx":
            return "nginx"
        for i, arg in enumerate(self.args):
            if arg.lower() == "--transport" and i + 1 < len(self.args):
                return self.args[i + 1].lower()
            if arg.lower().startswith("--transport="):
                return arg.split("=", 1)[1].lower()
        return "epoll"


INLINE_KEY = "--Kestrel:Transport:Epoll:UnsafePreferInlineScheduling"
SOCKETS_ARGS = ["--Transport", "sockets"]
EPOLL_ARGS = ["--Transport", "epoll", f"{INLINE_KEY}=false"]
INLINE_ARGS = ["--Transport", "epoll", f"{INLINE_KEY}=true"]
AOT_NOTE = ", Native AOT build (dotnet publish -p:PublishAot=true)"
BUILTIN_VARIANTS = [
    Variant("sockets", "dotnet", SOCKETS_ARGS, description="Kestrel's Sockets transport, defaults"),
    Variant("epoll", "dotnet", EPOLL_ARGS,
            description="epoll transport, its defaults: inline scheduling forced off whatever the sample ships"),
    Variant("epoll-inline", "dotnet", INLINE_ARGS, description="epoll transport, UnsafePreferInlineScheduling=true"),
    Variant("epoll-sample", "dotnet", ["--Transport", "epoll"],
            description="epoll transport with the sample's appsettings.json as shipped, nothing overridden"),
    Variant("nginx", "nginx", description="nginx, 1 worker, return 200 (a reference, not a contender)"),
    Variant("sockets-aot", "dotnet", SOCKETS_ARGS, description="Kestrel's Sockets transport, defaults" + AOT_NOTE,
            aot=True),
    Variant("epoll-aot", "dotnet", EPOLL_ARGS, description="epoll transport, its defaults" + AOT_NOTE, aot=True),
    Variant("epoll-inline-aot", "dotnet", INLINE_ARGS,
            description="epoll transport, UnsafePreferInlineScheduling=true" + AOT_NOTE, aot=True),
]
ENV_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def aot_twin(name: str) -> str:
    """--aot adds, for each built-in .NET variant chosen, its AOT build when there is one: sockets -> sockets-aot."""
    return f"{name}-aot"


def parse_variant(spec: str, who: str = "run.py") -> Variant:
    """name=ARGS: ARGS are extra arguments for the sample (shell words); NAME=VALUE words are environment
    variables, except app=DIR: run the sample published in DIR (e.g. a build of the commit before a change) instead
    of the runner's own build; without --Transport the variant runs on epoll."""
    if "=" not in spec:
        raise SystemExit(f"{who}: --variant '{spec}': expected name=ARGS, e.g. "
                         f"'epoll-1t=--Kestrel:Transport:Epoll:ThreadCount=1'")
    name, rest = spec.split("=", 1)
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise SystemExit(f"{who}: --variant name '{name}': use letters, digits, '-', '_', '.', '+'")
    env, args, app_dir = {}, [], None
    for word in shlex.split(rest):
        if word.startswith("app="):
            app_dir = os.path.abspath(os.path.expanduser(word[4:]))
            if not os.path.isfile(os.path.join(app_dir, "WebApp")) and not os.path.isfile(os.path.join(app_dir, "WebApp.dll")):
                raise SystemExit(f"{who}: --variant '{name}': {app_dir} holds no published WebApp")
        elif ENV_TOKEN.match(word) and not word.startswith("-"):
            key, value = word.split("=", 1)
            env[key] = value
        else:
            args.append(word)
    if not any(a.lower() == "--transport" or a.lower().startswith("--transport=") for a in args):
        args = ["--Transport", "epoll"] + args
    return Variant(name, "dotnet", args, env, description=rest.strip() or "epoll transport, the sample as shipped",
                   app_dir=app_dir)


def choose(names: str | None, defaults: list, extra: list, who: str, builtin=None) -> list:
    """The variants named in a comma-separated list (from the built-in ones and extra), or defaults + extra."""
    available = {v.name: v for v in (BUILTIN_VARIANTS if builtin is None else builtin)}
    for v in extra:
        available[v.name] = v
    if names:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in available]
        if unknown:
            raise SystemExit(f"{who}: unknown variant(s) {', '.join(unknown)}; known: {', '.join(available)} "
                             f"(add one with --variant name=ARGS)")
        variants = [available[n] for n in chosen]
    else:
        variants = [available[n] for n in defaults] + extra
    if len({v.name for v in variants}) != len(variants):
        raise SystemExit(f"{who}: a variant is named twice")
    return variants


NGINX_CONF = """\
# Written by benchmarks/load/run.py: one process (no master), in the foreground, loopback only.
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/body;
    server {{
        listen {host}:{port} backlog=4096;
        location = /plaintext {{
            default_type text/plain;
            return 200 "Hello, World!";
        }}
        location = /json {{
            default_type application/json;
            return 200 '{{"message":"Hello, World!"}}';
        }}
    }}
}}
"""


def nginx_path() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


class NginxServer(sample.Service):
    """nginx from a generated nginx.conf in a temp folder, one process, pinned to cpu."""

    def __init__(self, cpu: int, workdir: Path, log_path: Path, name: str = "nginx"):
        port = sample.free_port()  # nginx cannot be told port 0 and say which one it got
        ndir = workdir / f"nginx-{port}"
        ndir.mkdir(parents=True, exist_ok=True)
        (ndir / "nginx.conf").write_text(NGINX_CONF.format(dir=ndir, host=HOST, port=port))
        cmd = ["taskset", "-c", str(cpu), nginx_path(), "-p", str(ndir), "-c", str(ndir / "nginx.conf"),
               "-e", str(ndir / "error.log")]
        super().__init__(cmd, log_path, env=dict(os.environ), cwd=str(workdir), extra_logs=[ndir / "error.log"],
                         name=name)
        self.http_port = port
        self.echo_port = -1
        self.http2_port = -1  # h2c loads are not run against nginx

    def wait_ready(self, deadline_s: float = 30.0) -> None:
        try:
            self.wait_answers(deadline_s)
        except sample.ServerFailure:
            self.stop()
            raise


def create(variant: Variant, echo: bool, cpu: int, workdir: Path, log_path: Path, extra_args=()) -> sample.Service:
    """Starts the variant's server; its wait_ready(deadline) then waits until it answers GET /plaintext (and a .NET
    server must say it runs the variant's transport: SystemExit otherwise, never measure the wrong one), raising
    sample.ServerFailure when it exits or does not answer in time."""
    if variant.kind == "nginx":
        return NginxServer(cpu, workdir, log_path, variant.name)
    app = Path(variant.app_dir) if variant.app_dir else AOT_DIR if variant.aot else APP_DIR
    server = sample.SampleServer(app, list(variant.args) + list(extra_args),
                               env=variant.env, cpu=cpu, log_path=log_path, echo_port=0 if echo else -1,
                               http2_port=0, name=variant.name, cwd=str(workdir),
                               expect_transport=variant.transport)
    # The connrate load sends a PROXY protocol header to a server that requires one.
    server.proxy_protocol = "--ProxyProtocol" in variant.args
    return server
