"""The search layer: Ray Tune over experiment keys, ASHA, ranking by accuracy or time-to-target."""
