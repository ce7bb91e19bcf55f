"""raytrain: train deep-learning models faster on Ray (Ray Train for parallelism, Ray Tune for search).

    import raytrain
    exp = raytrain.load_experiment("experiments/digits-cnn.yaml", ["train.epochs=2"])
    result = raytrain.train(exp)                     # -> RunResult: run_dir, status, metrics, checkpoint
    raytrain.train(exp, model=my_factory, datasets={"train": ds, "val": ds})   # your nn.Module, your Ray Data
    found = raytrain.search("search/digits-quick.yaml")   # -> SearchResult: ranked trials, best_yaml, report
    raytrain.export(result.run_dir)                  # newest checkpoint: a plain state_dict + a torch.export program
    model = raytrain.load_model(result.run_dir)      # the trained nn.Module (pruned shapes included), no Ray
    raytrain.evaluate(result.run_dir).accuracy       # on its validation split, or evaluate(run, data="x.parquet")
    raytrain.train(exp, callbacks=[MyCallback()])    # raytrain.Callback: your code at the loop's events

Names load on first use, so `import raytrain` stays cheap (no torch or Ray until you train).
"""

__version__ = "0.2.0"

PUBLIC = ["Callback", "Experiment", "RunResult", "SearchResult", "UserError", "check_cluster", "evaluate", "export",
          "fit", "load_experiment", "load_model", "predict", "search", "train", "validate"]
"""The one list of public names (`raytrain.api` re-exports exactly these)."""
__all__ = list(PUBLIC)


def __getattr__(name: str):
    if name in PUBLIC:
        from raytrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'raytrain' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + PUBLIC)
