"""The data step's drawing styles and out-of-distribution sets, by name: plain data that the configuration checks
against without loading the renderer (components.data draws them)."""

STYLES = ("stamped", "original", "unseen-fonts")

# The out-of-distribution sets the data step renders beside the training data (OUT/ood/NAME): other seeds,
# photos from the held-out pool, and a style or source the training data leaves out.
OOD_SETS = {
    "original": dict(styles={"original": 1.0}, min_size=800, max_size=1600,
                     about="the original project's boards on held-out photos, larger photos"),
    "unseen-photos": dict(procedural_fraction=0.0, about="the training styles on held-out photos only"),
    "unseen-fonts": dict(styles={"unseen-fonts": 1.0},
                         about="stamped plates in fonts training never draws, on held-out photos"),
    "plate-free": dict(empty_fraction=1.0, procedural_fraction=0.0,
                       about="held-out photos with no plate: every plate reported is false"),
}
