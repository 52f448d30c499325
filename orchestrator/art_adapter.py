"""The Adversarial Robustness Toolbox (ART) view of a `heist serve` victim: a `BlackBoxClassifier` whose
`predict_fn` is `orchestrator.client.Client.predict`, so ART's extraction attacks (art.attacks.extraction:
CopycatCNN, KnockoffNets, FunctionallyEquivalentExtraction) query the served, defended victim over HTTP and
every image they send is charged to the client's key and written to the service's ledger.

    from orchestrator.client import Client
    from orchestrator.art_adapter import blackbox_classifier
    victim = blackbox_classifier(Client("http://127.0.0.1:8000", key))
    stolen = KnockoffNets(victim, nb_stolen=1000, use_probability=True, ...).extract(x_pool, thieved_classifier=...)

ART splits each `predict` into batches of its `batch_size_query` and calls `predict_fn` once per batch; with the
client's default `all_or_nothing=True` a batch the remaining budget cannot cover is refused whole (`OverBudget`)
and nothing of it is charged. Needs the optional extra: `pip install -e '.[art]'`.
"""
from __future__ import annotations


def blackbox_classifier(client, **kwargs):
    """An ART BlackBoxClassifier over `client` (an orchestrator.client.Client): input shape, classes and clip
    values from the server's /v1/info. `kwargs` go to BlackBoxClassifier (e.g. preprocessing)."""
    from art.estimators.classification import BlackBoxClassifier

    info = client.info()
    return BlackBoxClassifier(client.predict, tuple(info["input_shape"]), int(info["num_classes"]),
                              clip_values=tuple(float(v) for v in info["value_range"]), **kwargs)
