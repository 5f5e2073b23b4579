"""The ClientApp: cohort's local training of the linear task, timed.

`compute-ms` is the time inside `train` spent on the client's own work: drawing its partition
(a ClientApp process lives for one message in Flower's default subprocess isolation, so it
loads its data each round) and the local SGD. Everything else (the process start, unpacking
the app, pulling and pushing messages) is Flower's and counts as overhead."""

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from lsqapp.task import client_data, local_sgd

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    entered = time.time()
    t = time.perf_counter()
    cfg = context.run_config
    k = int(context.node_config["partition-id"])
    x, y = client_data(cfg, k)
    data_ms = (time.perf_counter() - t) * 1e3
    global_w = msg.content["arrays"].to_numpy_ndarrays()[0]
    rnd = int(msg.content["config"]["server-round"])
    rng = np.random.default_rng([int(cfg["seed"]), 3, k, rnd])
    w = local_sgd(cfg, x, y, global_w, rng)
    compute_ms = (time.perf_counter() - t) * 1e3
    metrics = MetricRecord(
        {
            "num-examples": int(y.shape[0]),
            "compute-ms": compute_ms,
            "data-ms": data_ms,
            "entered": entered,
            "partition": k,
        }
    )
    return Message(
        content=RecordDict({"arrays": ArrayRecord([w]), "metrics": metrics}),
        reply_to=msg,
    )
