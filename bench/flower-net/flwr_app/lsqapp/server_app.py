"""The ServerApp: FedAvg over the linear task, writing a timeline (wall-clock `time.time()`,
JSON lines) to the run config's `timing-file` for bench/flower-net/run.py:

- `round-open`: `configure_train` returned (nodes sampled, messages built; round 1 waits
  here until `min_available_nodes`, i.e. every SuperNode, is connected);
- `aggregated`: `aggregate_train` is done, with each reply's `compute-ms`, `data-ms` and the
  wall time its `train` was entered;
- `round-end`: the centralized test evaluation after the round (the last step of Flower's
  round loop; federated evaluation is off, fraction_evaluate = 0);
- `finished`."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from lsqapp.task import mse, test_data

app = ServerApp()


class _Timeline:
    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8")

    def emit(self, event, **kw):
        kw["event"] = event
        kw["t"] = time.time()
        self.f.write(json.dumps(kw) + "\n")
        self.f.flush()


class TimedFedAvg(FedAvg):
    def __init__(self, timeline, **kw):
        super().__init__(**kw)
        self.timeline = timeline

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.timeline.emit("round-open", round=server_round, nodes=len(messages))
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        clients = []
        for m in replies:
            if m.has_error():
                clients.append({"error": str(m.error.reason)})
                continue
            r = m.content["metrics"]
            clients.append(
                {
                    "partition": int(r["partition"]),
                    "compute_ms": float(r["compute-ms"]),
                    "data_ms": float(r["data-ms"]),
                    "entered": float(r["entered"]),
                }
            )
        out = super().aggregate_train(server_round, replies)
        self.timeline.emit("aggregated", round=server_round, clients=clients)
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    timeline = _Timeline(cfg["timing-file"])
    timeline.emit("main")
    n = int(cfg["clients"])
    k = int(cfg["clients-per-round"])
    strategy = TimedFedAvg(
        timeline,
        fraction_train=k / n,
        min_train_nodes=k,
        min_available_nodes=n,
        fraction_evaluate=0.0,
    )
    xt, yt = test_data(cfg)

    def evaluate(server_round, arrays):
        loss = mse(xt, yt, arrays.to_numpy_ndarrays()[0])
        if server_round > 0:
            timeline.emit("round-end", round=server_round, test_loss=loss)
        return MetricRecord({"loss": loss})

    dim = int(cfg["dim"])
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(dim, dtype=np.float32)]),
        num_rounds=int(cfg["rounds"]),
        evaluate_fn=evaluate,
    )
    timeline.emit("finished")
