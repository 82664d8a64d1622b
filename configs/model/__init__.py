"""MMDetection 3.x configs of the plate reader, written for this project.

The reader has two stages, both compact single-stage RTMDet-style detectors trained from scratch (no
downloaded weights):

  detector  finds plates (r_board, l_board) in the whole image, resized to `input_size` on its long side in
            training (then scaled x0.6-1.25) and to `infer_size` (default: input_size) for inference;
  reader    reads each plate crop, stretched to fill `crop_size` (w, h): the text regions (sub_text,
            main_text) and every character (0-9, A-E).

A plate 80 px wide in a 1280 px photo is 40 px wide at the quick detector's 640 px: enough to find it, far
too small to read it. Its crop, stretched to 256x96 px, puts characters 20-45 px high in front of the reader
(stretching makes two-row plates' characters 1.7x wider and one-row plates' 1.3x taller than a crop that
keeps the plate's aspect).
The quick detector trains at 640 px (x 0.6-1.25) and looks at 800 px, the top of that range, where small
plates are found more often at no training cost. Its training crops are 448x256 px and half of them are placed
around a whole plate: a one-row plate as wide as the data step draws them (0.7 of the photo's width: 448 px at
640) fits whole. The reader is trained to read nothing on boxes the detector takes for plates where there are
none (negatives mined from the trained detector: components.train).

`stage_config(stage, preset, **overrides)` returns a plain dict (MMDetection's config schema: model,
pipelines, data loaders, optimiser, schedule) that goes into pipeline.pth as it is, so inference rebuilds
the model with no config file on disk.
"""

from __future__ import annotations

import copy

from platepipe.serving.labels import CLASSES, PLATE_TYPES

DETECTOR_CLASSES = PLATE_TYPES
READER_CLASSES = tuple(c for c in CLASSES if c not in PLATE_TYPES)

# Per preset and stage: network width and depth, input size, training crop (w, h), batch, iterations, learning
# rate, data workers, and whether validation and the exported model use an exponential moving average of the
# weights (ema: without it the reader's validation EIR swings from one checkpoint to the next).
PRESETS = {
    "quick": {  # CPU: both stages at once on 2 cores, so that the local run ends within 15 minutes
        "time_budget_min": 12.0,
        "detector": dict(widen=0.1875, deepen=0.167, input_size=640, infer_size=800, train_crop=(448, 256),
                         batch_size=4, max_iters=3000, lr=0.004, workers=2),
        # the reader's crops load in the main process (on 2 cores data workers slow it); the detector's whole
        # photos gain from 2
        "reader": dict(widen=0.25, deepen=0.167, crop_size=(256, 96), batch_size=8, max_iters=5200, lr=0.004,
                       workers=0, ema=True),
    },
    "full": {  # GPU, best accuracy
        "detector": dict(widen=0.5, deepen=0.33, input_size=800, train_crop=(640, 384), batch_size=16,
                         max_iters=12000, lr=0.004, workers=4),
        "reader": dict(widen=0.5, deepen=0.33, crop_size=(320, 128), batch_size=64, max_iters=12000, lr=0.004,
                       workers=4, ema=True),
    },
    "tiny": {  # tests: a few iterations to exercise training, resume and export
        "detector": dict(widen=0.125, deepen=0.167, input_size=256, train_crop=(192, 192), batch_size=2, max_iters=4,
                         lr=0.004, workers=0),
        "reader": dict(widen=0.125, deepen=0.167, crop_size=(128, 48), batch_size=4, max_iters=4, lr=0.004,
                       workers=0, ema=True),
    },
}

MEAN, STD = [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]  # BGR


def rtmdet(num_classes: int, widen: float, deepen: float, max_per_img: int) -> dict:
    norm, act = dict(type="BN"), dict(type="SiLU", inplace=True)
    channels = [int(256 * widen), int(512 * widen), int(1024 * widen)]
    width = max(32, int(256 * widen))
    return dict(
        type="RTMDet",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=MEAN, std=STD, bgr_to_rgb=False, pad_size_divisor=32),
        backbone=dict(type="CSPNeXt", arch="P5", expand_ratio=0.5, deepen_factor=deepen, widen_factor=widen,
                      channel_attention=True, norm_cfg=norm, act_cfg=act),
        neck=dict(type="CSPNeXtPAFPN", in_channels=channels, out_channels=width, num_csp_blocks=1,
                  expand_ratio=0.5, norm_cfg=norm, act_cfg=act),
        bbox_head=dict(type="RTMDetSepBNHead", num_classes=num_classes, in_channels=width, stacked_convs=2,
                       feat_channels=width, anchor_generator=dict(type="MlvlPointGenerator", offset=0, strides=[8, 16, 32]),
                       bbox_coder=dict(type="DistancePointBBoxCoder"),
                       loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
                       loss_bbox=dict(type="GIoULoss", loss_weight=2.0), with_objectness=False, exp_on_reg=False,
                       share_conv=True, pred_kernel_size=1, norm_cfg=norm, act_cfg=act),
        train_cfg=dict(assigner=dict(type="DynamicSoftLabelAssigner", topk=13), allowed_border=-1, pos_weight=-1,
                       debug=False),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                      max_per_img=max_per_img),
    )


def _detector(p: dict) -> dict:
    size = p["input_size"]  # long side in training (before random scaling), validation and inference
    train_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="RandomResize", scale=(size, size), ratio_range=(0.6, 1.25), keep_ratio=True),
        # train on fixed crops of the resized image: the network is fully convolutional, so it learns the
        # same per-pixel task at a fraction of the cost, and inference still sees the whole image; half the
        # crops are placed to hold a whole plate; crops are wide (w, h), like the plates
        dict(type="PlateRandomCrop", crop_size=tuple(p["train_crop"]), allow_negative_crop=True),
        dict(type="RandomFlip", prob=0.5),  # a mirrored plate is still a plate; the reader never flips
        dict(type="Pad", size=tuple(p["train_crop"]), pad_val=dict(img=(114, 114, 114))),
        dict(type="PackDetInputs"),
    ]
    test_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=(size, size), keep_ratio=True),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]
    return dict(model=rtmdet(len(DETECTOR_CLASSES), p["widen"], p["deepen"], max_per_img=50),
                classes=DETECTOR_CLASSES, input_size=size, infer_size=p.get("infer_size", size),
                train_pipeline=train_pipeline, test_pipeline=test_pipeline)


def _reader(p: dict) -> dict:
    w, h = p["crop_size"]
    fill = True  # crops stretched to fill (serving.crops); inference reads it from the exported crop_fill
    train_pipeline = [
        dict(type="LoadPlateRegion"),  # the photo decoded once per plate, its surroundings kept in memory
        dict(type="CropPlate", size=(w, h), jitter=0.08, fill=fill),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="PhotoMetricDistortion", brightness_delta=24, contrast_range=(0.7, 1.3),
             saturation_range=(0.7, 1.3), hue_delta=10),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor",
                                              "plate_text", "plate_type")),
    ]
    test_pipeline = [
        dict(type="LoadPlateRegion"),
        dict(type="CropPlate", size=(w, h), jitter=0.0, fill=fill),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor",
                                              "plate_text", "plate_type")),
    ]
    return dict(model=rtmdet(len(READER_CLASSES), p["widen"], p["deepen"], max_per_img=40),
                classes=READER_CLASSES, crop_size=[w, h], crop_fill=fill, train_pipeline=train_pipeline,
                test_pipeline=test_pipeline)


def stage_config(stage: str, preset: str, **overrides) -> dict:
    """The config of one stage ("detector" or "reader") for a preset; overrides (not None) replace the
    preset's batch_size, max_iters, lr or workers."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}: choose one of {', '.join(PRESETS)}")
    params = copy.deepcopy(PRESETS[preset][stage])
    params.update({k: v for k, v in overrides.items() if v is not None})
    cfg = _detector(params) if stage == "detector" else _reader(params)
    cfg.update(stage=stage, preset=preset, batch_size=params["batch_size"], max_iters=params["max_iters"],
               lr=params["lr"], workers=params["workers"], ema=params.get("ema", False))
    return cfg
