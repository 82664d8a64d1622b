"""MMDetection/MMEngine parts the training needs, registered under the `mmdet` scope when this package is
imported (configs/model names them by type):

  data.py      the plate-crop dataset and the transforms (PlateCropDataset, PlateRandomCrop, LoadPlateRegion, CropPlate)
  metric.py    PlateReadMetric: the reader's exact read rate on crops, which picks the best checkpoint
  schedule.py  the loop validating from the end, the time budget, the progress lines
  stages.py    the two stages side by side: negatives mined part-way, the reader's watch on the detector
  optim.py     bfloat16 autocast, grouped AdamW parameters, the fast EMA
"""

from platepipe.components.mm import data, metric, optim, schedule, stages  # noqa: F401  registers every part
