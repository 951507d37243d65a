"""The device's Flower ClientApp: one round = train B locally, send B back (clipped, masked).

Mods, outermost first: ``audit_mod`` (counts the bytes of every message this device sends, and
can keep a copy for inspection), Flower's ``secaggplus_mod`` (the server only ever sees the sum
of the devices' vectors), Flower's ``fixedclipping_mod`` (the update is clipped to the norm the
server's DP wrapper announces, before masking). The server adds the Gaussian noise to the sum.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod

from assistant import paths
from federated import config as config_mod
from federated import lora

SERIAL_ENV = "PA_FED_SERIAL_LOCK"  # simulation only: devices sharing one machine train in turn
CAPTURE_ENV = "PA_FED_CAPTURE"  # not ASSISTANT_*: those are settings overrides  # a folder: every outgoing message is also written there


def audit_mod(msg: Any, ctxt: Any, call_next: Any) -> Any:
    """Log the size of each reply this device sends (``federated/sent.jsonl``)."""
    from flwr.common.serde import message_to_proto

    out = call_next(msg, ctxt)
    data = message_to_proto(out).SerializeToString()
    folder = config_mod.fed_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "sent.jsonl", "a") as fh:
        fh.write(json.dumps({"at": time.time(), "run": msg.metadata.run_id, "type": msg.metadata.message_type,
                             "bytes": len(data)}) + "\n")
    capture = os.environ.get(CAPTURE_ENV)
    if capture:
        os.makedirs(capture, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}.bin"
        with open(os.path.join(capture, name), "wb") as fh:
            fh.write(data)
    return out


class _SerialLock:
    """With ``PA_FED_SERIAL_LOCK`` set (a simulation of N devices on one machine), one device
    trains at a time; a real device has the machine to itself and takes no lock."""

    def __enter__(self) -> None:
        path = os.environ.get(SERIAL_ENV)
        self.fh = open(path, "a") if path else None
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.close()  # closing releases the lock (also when the process is killed)


class DeviceClient(NumPyClient):
    def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
        from federated.idle import IdleGuard
        from federated.local import adopt, train_update

        if config_mod.joined() is None:  # the SuperNode runs only after `join`; belt and braces
            raise config_mod.FederatedError("this device has not joined a federation (`assistant federate join`)")
        cfg = config_mod.load_config()
        pack = str(config["pack"])
        adapter = lora.from_blob(bytes(config["a_blob"]), json.loads(str(config["b_names"])), parameters)
        adopt(adapter, str(config["version"]), pack)
        guard = IdleGuard(cfg)
        deadline = time.monotonic() + float(config.get("deadline_s", 600.0))
        if not guard.wait(max(0.0, deadline - time.monotonic() - 5.0)):
            raise config_mod.FederatedError(f"device not idle: {guard.reason}")
        with _SerialLock():
            guard.start()
            try:
                update = self._train(adapter, pack, cfg, config, guard, deadline, train_update)
            finally:
                spent = guard.stop()
        metrics = {"examples": update.examples, "replay": update.replay, "users": update.users,
                   "steps": update.steps, "train_seconds": round(update.seconds, 3), "budget_seconds": round(spent, 3),
                   "update_norm": update.update_norm}
        # Weight 1 for every device: the DP noise is calibrated to one device's clipped update.
        return update.b_arrays, 1, metrics

    @staticmethod
    def _train(adapter: Any, pack: str, cfg: Any, config: dict[str, Any], guard: Any, deadline: float,
               train_update: Any) -> Any:
        return train_update(
            adapter, pack, cfg, steps=int(config.get("steps", cfg.steps)), seed=int(config.get("seed", 0)),
            should_pause=lambda: time.monotonic() < deadline and guard.should_pause(),
            should_stop=lambda: time.monotonic() >= deadline or guard.over_budget(),
            time_budget_s=max(1.0, deadline - time.monotonic() - 5.0),
        )


def client_fn(context: Any) -> Any:
    del context
    paths.home()  # ASSISTANT_HOME of the SuperNode (set by `assistant federate join`)
    return DeviceClient().to_client()


app = ClientApp(client_fn=client_fn, mods=[audit_mod, secaggplus_mod, fixedclipping_mod])
