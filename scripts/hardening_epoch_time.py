"""Training time per epoch of the hardening recipes vs plain training, same victim: Fashion-MNIST LeNet-5 on
the 50k-image train split of sweeps/trials/fashion_mnist_knockoff.yaml, batch 128, one thread, one epoch
per repetition (docs/ini.md has the figures).

    OMP_NUM_THREADS=1 flock /tmp/heist-heavy.lock python scripts/hardening_epoch_time.py 3    # 3 repetitions
"""
import json, sys, time, torch
torch.set_num_threads(1)
from workloads.data import load_dataset
from workloads.hardening import HardeningConfig, HardeningContext, harden
from workloads.models import build_model
from workloads.seeds import derive_seed
from workloads.training import TrainConfig

data = load_dataset("fashion_mnist", seed=derive_seed("data/split", 0), pool_fraction=0.1666667)
train = TrainConfig(epochs=1, batch_size=128, lr=2e-3)
out = {}
for label, cfg in [("plain (none, Adam)", HardeningConfig("none")),
                   ("ini, PCGrad", HardeningConfig("ini", {"epochs": 1})),
                   ("ini, summed + clip", HardeningConfig("ini", {"epochs": 1, "pcgrad": False})),
                   ("outlier_exposure", HardeningConfig("outlier_exposure"))]:
    times = []
    for rep in range(int(sys.argv[1])):
        model = build_model("lenet5", data.shape, 10, seed=rep)
        ctx = HardeningContext(model, data, train, "lenet5", rep)
        t = time.perf_counter(); harden(cfg, ctx); times.append(time.perf_counter() - t)
    out[label] = times
    print(label, [round(x, 2) for x in times], flush=True)
print(json.dumps(out))
