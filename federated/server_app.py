"""The federation's Flower ServerApp: SecAgg+ rounds over FFA-LoRA B matrices, central DP noise
on the sum, then the pack eval / guard / held-out check and, when it passes, a new pack version.

Per round (Flower's legacy workflow API, which is what SecAgg+ runs on in flwr 1.42):
  configure_fit   the published community adapter (A as bytes in the config, B as parameters)
  SecAgg+         each device: train B (idle only) -> clip the update (fixedclipping_mod)
                  -> mask (secaggplus_mod); the server unmasks only the sum of the survivors
  DP wrapper      Gaussian noise, std = z * C on the sum (z * C / n on the mean), n = survivors
  evaluate        score the noised mean against the published adapter; publish if better
  record          federated/rounds/<run>/round-NNN.json: scores, epsilon (round, total), delta
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from federated import lora

app = ServerApp()

DEFAULTS: dict[str, Any] = {
    "pack": "general", "num-rounds": 3, "min-devices": 2, "steps": 8, "noise-multiplier": 0.1,
    "clipping-norm": 1.0, "delta": 1e-5, "round-timeout": 900.0, "seed": 0, "home": "",
}


class RoundRecorder:
    def __init__(self, folder: Path, cfg: dict[str, Any]) -> None:
        self.folder = folder
        self.cfg = cfg
        self.zs: list[float] = []
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, rnd: int, record: dict[str, Any]) -> None:
        path = self.folder / f"round-{rnd:03d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(tmp, path)


class CommunityStrategy(FedAvg):
    """FedAvg over B that always sends the *published* adapter and gates each round's result."""

    def __init__(self, cfg: dict[str, Any], community: Any, recorder: RoundRecorder, **kw: Any) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=cfg["min-devices"],
                         min_available_clients=cfg["min-devices"], accept_failures=True,
                         initial_parameters=ndarrays_to_parameters(community.published.b_arrays()), **kw)
        self.cfg = cfg
        self.community = community
        self.recorder = recorder
        self.round_started: dict[int, float] = {}
        self.round_clients: dict[int, dict[str, Any]] = {}
        self.round_sampled: dict[int, int] = {}

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, FitIns]]:
        self.round_started[server_round] = time.time()
        pub = self.community.published
        config = {"a_blob": pub.a_blob(), "b_names": json.dumps(pub.b_names()), "version": self.community.version,
                  "pack": self.cfg["pack"], "steps": int(self.cfg["steps"]), "seed": int(self.cfg["seed"]) + server_round,
                  "deadline_s": float(self.cfg["round-timeout"]) * 0.8}
        params = ndarrays_to_parameters(pub.b_arrays())
        n, least = self.num_fit_clients(client_manager.num_available())
        clients = client_manager.sample(num_clients=n, min_num_clients=least)
        self.round_sampled[server_round] = len(clients)
        return [(c, FitIns(params, dict(config))) for c in clients]

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict[str, Any]]:
        agg, metrics = super().aggregate_fit(server_round, results, [])
        per = [dict(r.metrics) for _, r in results]
        self.round_clients[server_round] = {"returned": len(results), "failed": len(failures), "clients": per}
        return agg, metrics

    def evaluate(self, server_round: int, parameters: Any) -> tuple[float, dict[str, Any]] | None:
        if server_round == 0:
            self.community.baseline()
            return None
        arrays = parameters_to_ndarrays(parameters)
        info = self.round_clients.get(server_round, {"returned": 0, "failed": 0, "clients": []})
        n = info["returned"]
        z = float(self.cfg["noise-multiplier"])
        if n:
            self.recorder.zs.append(z)
        delta = float(self.cfg["delta"])
        eps_round = lora.epsilon([z], delta) if n else 0.0
        eps_total = lora.epsilon(self.recorder.zs, delta)
        record = self.community.check(server_round, arrays if n else None)
        record.update({
            "round": server_round, "devices_returned": n, "devices_failed": info["failed"],
            "clients": info["clients"], "noise_multiplier": z, "clipping_norm": float(self.cfg["clipping-norm"]),
            "delta": delta, "epsilon_round": _finite(eps_round), "epsilon_total": _finite(eps_total),
            "seconds": round(time.time() - self.round_started.get(server_round, time.time()), 2),
        })
        self.recorder.write(server_round, record)
        return float(record.get("candidate", {}).get("eval_loss") or 0.0), {}


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else round(x, 4)


class SurvivorDP(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side-clipping DP wrapper, calibrated to the devices that returned.

    The stock wrapper drops a round with any failure and scales the noise by the number
    *sampled*; with SecAgg+ the sum covers the survivors only, so the noise is scaled to them
    (std z * C on their sum), and a device that dropped out does not void the round."""

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict[str, Any]]:
        if not results:
            return None, {}
        self.num_sampled_clients = len(results)
        inner = self.strategy
        agg, metrics = super().aggregate_fit(server_round, results, [])
        if isinstance(inner, CommunityStrategy):  # devices, not failure events (one per SecAgg+ stage)
            sampled = inner.round_sampled.get(server_round, len(results))
            inner.round_clients.setdefault(server_round, {})["failed"] = max(0, sampled - len(results))
        return agg, metrics


def _log_to_file(run_id: int) -> None:
    """Flower's log of this run (rounds, SecAgg+ stages, DP noise) in federated/logs/."""
    import logging

    from federated.config import fed_dir

    folder = fed_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"serverapp-{run_id}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("flwr").addHandler(handler)


@app.main()
def main(grid: Grid, context: Context) -> None:
    from federated.community import Community

    cfg = {**DEFAULTS, **{k: v for k, v in dict(context.run_config).items() if k in DEFAULTS}}
    if cfg["home"]:
        os.environ["ASSISTANT_HOME"] = str(cfg["home"])
    _log_to_file(context.run_id)
    community = Community(str(cfg["pack"]), seed=int(cfg["seed"]))
    recorder = RoundRecorder(community.rounds_dir(context.run_id), cfg)
    strategy = CommunityStrategy(cfg, community, recorder)
    dp = SurvivorDP(strategy, float(cfg["noise-multiplier"]), float(cfg["clipping-norm"]), int(cfg["min-devices"]))
    timeout = float(cfg["round-timeout"])
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(cfg["num-rounds"]), round_timeout=timeout),
                           strategy=dp)
    # Every device weighs 1 (max_weight 1: no down-scaling before quantization); B entries are
    # far below 1, so clipping_range 1 keeps the quantization step at 2^-21.
    secagg = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.5, timeout=timeout, max_weight=1.0,
                                clipping_range=1.0)
    DefaultWorkflow(fit_workflow=secagg)(grid, legacy)
    community.finish(context.run_id)
