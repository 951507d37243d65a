"""Flower's Deployment Runtime as processes: SuperLink, SuperNodes, and `flwr run` for the app.

Every process gets ``FLWR_TELEMETRY_ENABLED=0`` (Flower's usage telemetry is on by default; this
product sends nothing anywhere), its own ``FLWR_HOME`` under ``federated/flwr``, and this
package on ``PYTHONPATH`` so the SuperLink's ServerApp process and a SuperNode's ClientApp
processes import this code. Runtime dependency installation is disabled: the app runs in the
environment the assistant is installed in.

Transport security: an address that is not loopback needs TLS (a CA certificate for a device,
a certificate and key for the server); ``--insecure`` is refused there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federated.config import FederatedError, fed_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "assistant-federated"


def launcher(name: str) -> list[str]:
    """The command that starts a SuperLink or SuperNode (see ``federated.launch``)."""
    tool(name)  # present: the extra is installed
    return [sys.executable, "-m", "federated.launch", name]


def tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FederatedError(f"{name} not found next to {sys.executable}: install the extra with "
                             "`pip install 'personal-assistant[federated]'`")
    return str(path)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise FederatedError(f"address {address!r} must be HOST:PORT, e.g. 192.168.1.20:9092")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(host: str, insecure: bool, have_certs: bool, what: str) -> None:
    if insecure and not is_loopback(host):
        raise FederatedError(f"--insecure is only allowed on loopback (127.0.0.1); {host} needs TLS: "
                             f"give {what} (make them with `assistant federate certs DIR --host {host}`)")
    if not insecure and not have_certs:
        raise FederatedError(f"TLS needs {what}, or use --insecure on loopback only")


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ASSISTANT_HOME"] = str(home)
    env["FLWR_HOME"] = str(fed_dir(home) / "flwr")
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # flower-superexec
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _descendants(self) -> list[Any]:
        """Flower's SuperExec and app processes detach into sessions of their own; find them
        as descendants so they stop with the process that started them."""
        try:
            import psutil

            return psutil.Process(self.popen.pid).children(recursive=True)
        except Exception:
            return []

    def stop(self, timeout: float = 10.0) -> None:
        """Stop this process and every process it started."""
        kids = self._descendants()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        for kid in kids:
            with contextlib.suppress(Exception):
                kid.kill()

    def kill_group(self) -> None:
        """SIGKILL, as a crash would: the process, its group and everything it started."""
        kids = self._descendants()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        for kid in kids:
            with contextlib.suppress(Exception):
                kid.kill()
        self.popen.wait(5)


def _spawn(name: str, args: list[str], home: Path, env: dict[str, str] | None = None, nice: int = 0) -> Proc:
    logs = fed_dir(home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    fh = open(log, "ab")
    pre = ["nice", "-n", str(nice)] if nice else []
    popen = subprocess.Popen(pre + args, stdout=fh, stderr=subprocess.STDOUT, env=env or env_for(home),
                             start_new_session=True, cwd=str(home))
    fh.close()
    return Proc(name, popen, log)


def wait_port(host: str, port: int, timeout: float, proc: Proc | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            raise FederatedError(f"{proc.name} exited early; see {proc.log}:\n{tail(proc.log)}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise FederatedError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_superlink(home: Path, host: str, port: int, insecure: bool, certs: Path | None = None,
                    nice: int = 0) -> Proc:
    check_transport(host, insecure, certs is not None, "--certificates DIR (ca.crt, server.pem, server.key)")
    args = launcher("flower-superlink") + ["--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if insecure:
        args.append("--insecure")
    else:
        assert certs is not None
        args += ["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
                 "--ssl-keyfile", str(certs / "server.key")]
    proc = _spawn("superlink", args, home, nice=nice)
    wait_port("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, 60, proc)
    return proc


def start_supernode(home: Path, address: str, runtime_port: int, insecure: bool, root_certificates: str | None,
                    nice: int = 0, name: str = "supernode") -> Proc:
    host, _ = split_address(address)
    check_transport(host, insecure, bool(root_certificates), "--root-certificates CA.crt")
    args = launcher("flower-supernode") + ["--superlink", address, "--port", str(runtime_port), "--max-wait-time", "600"]
    args += ["--insecure"] if insecure else ["--root-certificates", str(root_certificates)]
    return _spawn(name, args, home, nice=nice)


def write_app(home: Path, defaults: dict[str, Any]) -> Path:
    """The Flower App folder `flwr run` bundles: only a pyproject naming our components (the code
    itself is this installed package)."""
    folder = fed_dir(home) / "app"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = "\n".join(f"{k} = {json.dumps(v)}" for k, v in defaults.items())
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "Community pack adapters for the personal assistant (FFA-LoRA, SecAgg+, DP)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "personal-assistant"

[tool.flwr.app.components]
serverapp = "federated.server_app:app"
clientapp = "federated.client_app:app"

[tool.flwr.app.config]
{cfg}
""")
    return folder


def flwr_run(home: Path, address: str, insecure: bool, root_certificates: str | None,
             run_config: dict[str, Any], defaults: dict[str, Any]) -> int:
    """Submit the ServerApp to the SuperLink; returns the run id."""
    app = write_app(home, defaults)
    flwr_home = fed_dir(home) / "flwr"
    flwr_home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, str | bool] = {"address": address}
    if insecure:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(root_certificates)
    lines = ['[superlink]', 'default = "assistant"', '', '[superlink.assistant]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in conn.items()]
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    args = [tool("flwr"), "run", str(app), "assistant", "--format", "json"]
    if overrides:
        args += ["--run-config", overrides]
    out = subprocess.run(args, env=env_for(home), capture_output=True, text=True, timeout=900, cwd=str(app))
    try:
        data = json.loads(out.stdout[out.stdout.index("{"):])
        return int(data["run-id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FederatedError(f"`flwr run` failed ({out.returncode}): {out.stdout[-800:]} {out.stderr[-800:]}") from exc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
