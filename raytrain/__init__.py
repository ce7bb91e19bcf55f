"""raytrain: train deep-learning models faster on Ray (Ray Train for parallelism, Ray Tune for search).

    import raytrain
    exp = raytrain.load_experiment("experiments/digits-cnn.yaml", ["train.epochs=2"])
    result = raytrain.train(exp)                     # -> RunResult: run_dir, status, metrics, checkpoint
    raytrain.train(exp, model=my_factory, datasets={"train": ds, "val": ds})   # your nn.Module, your Ray Data
    found = raytrain.search("search/digits-quick.yaml")   # -> SearchResult: ranked trials, best_yaml, report
    raytrain.export(result.run_dir)                  # newest checkpoint: a plain state_dict + a torch.export program
    model = raytrain.load_model(result.run_dir)      # the trained nn.Module (pruned shapes included), no Ray
    raytrain.evaluate(result.run_dir).accuracy       # on its validation split, or evaluate(run, data="x.parquet")

Names load on first use, so `import raytrain` stays cheap (no torch or Ray until you train).
"""

__version__ = "0.2.0"

_API = ("Experiment", "RunResult", "SearchResult", "UserError", "check_cluster", "evaluate", "export", "fit",
        "load_experiment", "load_model", "predict", "search", "train", "validate")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from raytrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'raytrain' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
