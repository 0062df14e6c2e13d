"""Every field of a run, with defaults. The other config files start from this one.

Fields set to ``None`` are unset: the program chooses (dataset defaults, loss defaults).
"""

import ml_collections
from ml_collections import config_dict

from regionloss_jax.losses import loss_option_types

# make_loss options a config may set as loss.<option>; None leaves the loss's own default.
# Read from the loss functions' signatures; per-class options (class_weights, alpha) are
# tuples, a one-element tuple standing for a scalar.
LOSS_OPTION_TYPES = loss_option_types()


# The compounds' settings in their references: nnU-Net and MONAI's DiceCELoss add CE and
# Dice 1:1; the paper authors' published CE+L1 configs (SegLossBias, configs/polyp/
# unet_our.yaml and configs/retinal-lesions/unet_bce-l1_512x512.yaml) use weight 1.0 and
# temperature 10 (their Cityscapes config weight 5.0). KL and the size term db, which have
# no published config, take the L1 setting. The study tunes both on validation.
REFERENCE_WEIGHT = 1.0
REFERENCE_TEMPERATURE = 10.0
REGION_TERMS = ("l1", "kl", "db")


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.data = ml_collections.ConfigDict()
  config.data.name = "imbalanced_shapes/multiclass"
  # folder / volumes: the dataset root; nnunet: nnU-Net's raw dataset folder (dataset.json,
  # imagesTr/, labelsTr/, ...), whose dataset.json gives the classes and channels.
  config.data.dir = ""
  # Required for folder / volumes; nnunet: optional, and must agree with dataset.json.
  config.data.num_classes = config_dict.placeholder(int)
  # folder / volumes: one name per class, background first (reports and plots use them);
  # unset: background, class_1, ...
  config.data.class_names = config_dict.placeholder(tuple)
  # folder / volumes: (raw mask value, class id) pairs, e.g. ((0, 0), (255, 1)) for 0/255
  # binary masks; unset: mask values are class ids.
  config.data.value_map = config_dict.placeholder(tuple)
  # (H, W) or (D, H, W) every image is resized to; () keeps each image's own size (native
  # resolution, which needs patch_size).
  config.data.image_size = (64, 64)
  # Train on random patches of this size (H, W) / (D, H, W) instead of whole images, and
  # evaluate whole images through sliding windows of this size.
  config.data.patch_size = config_dict.placeholder(tuple)
  # Share of patches centred on a pixel of a foreground class, the class drawn uniformly
  # among those in the image (nnU-Net's 1/3).
  config.data.foreground_fraction = 1 / 3
  config.data.spacing = config_dict.placeholder(tuple)  # volumes: resample to (D, H, W) mm
  config.data.intensity_range = config_dict.placeholder(tuple)  # volumes: fixed window
  config.data.cache_dir = ""  # default ~/.cache/regionloss_jax
  config.data.split_sizes = config_dict.placeholder(tuple)  # imbalanced_shapes only
  # Cross-validation (train.fold): nnU-Net's splits_final.json, a list of {"train": [ids],
  # "val": [ids]} per fold. "": data.dir/splits_final.json for folder / volumes, else
  # <cache_dir>/splits/<dataset>.json; written on first use when missing, then reused.
  config.data.splits_file = ""
  config.data.border = "class"  # oxford_iiit_pet: trimap border as a "class" or "ignore"
  config.data.augment = True
  config.data.num_threads = 2

  config.model = ml_collections.ConfigDict()
  config.model.spatial_dims = 2
  config.model.depth = 3
  config.model.features = 16
  config.model.max_features = config_dict.placeholder(int)
  config.model.norm = "instance"
  config.model.activation = "leaky_relu"
  config.model.dropout_rate = 0.0
  config.model.upsample = "transpose"
  config.model.deep_supervision = False
  # Per down-sampling step, a factor (2 or 1) per spatial axis, e.g. ((1, 2, 2), (2, 2, 2))
  # for thick slices (nnU-Net's anisotropic pooling; train.plan chooses it); unset: 2
  # everywhere.
  config.model.pooling = config_dict.placeholder(tuple)

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "ce+kl"
  config.loss.mode = "multiclass"
  # The dataset owns the label value of ignored pixels (SegmentationData.ignore_index) and
  # loss and metrics both use it; unset takes it, a different value is a config error.
  config.loss.ignore_index = config_dict.placeholder(int)
  # Compounds: the second term's factor (the schedule's target). Unset: the compound's
  # reference setting, REFERENCE_WEIGHT (and REFERENCE_TEMPERATURE for l1/kl/db).
  config.loss.weight = config_dict.placeholder(float)
  for option, kind in LOSS_OPTION_TYPES.items():
    config.loss[option] = config_dict.placeholder(kind)
  # ce+l1/kl/db on an NVIDIA GPU: the Pallas kernels (make_loss(pallas_kernel=True); README).
  config.loss.pallas_kernel = False
  # How the weight reaches loss.weight: "constant"; "linear" from start_weight over
  # ramp_steps; "step" (the paper's): start_weight times factor every step_size steps,
  # capped at loss.weight.
  config.loss.weight_schedule = ml_collections.ConfigDict()
  config.loss.weight_schedule.kind = "constant"
  config.loss.weight_schedule.start_weight = 0.0
  config.loss.weight_schedule.ramp_steps = 1000
  config.loss.weight_schedule.factor = 2.0
  config.loss.weight_schedule.step_size = 100

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = "cosine"  # constant | cosine | poly
  config.optimizer.warmup_steps = 50
  config.optimizer.end_learning_rate = 0.0  # cosine and poly end here
  config.optimizer.poly_power = 0.9
  config.optimizer.momentum = 0.9  # sgd
  config.optimizer.weight_decay = 1e-4  # adamw
  config.optimizer.grad_clip_norm = 1.0  # 0 disables clipping

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000
  config.train.batch_size = 16
  config.train.eval_batch_size = 32
  config.train.eval_every = 200
  config.train.checkpoint_every = 200
  config.train.keep_checkpoints = 2  # latest ones, plus the best by validation Dice
  config.train.log_every = 25
  config.train.seed = 0
  config.train.num_overlays = 6
  # False: the test split is never opened; the run ends with its best validation record
  # (the study tunes settings this way, so that no choice sees the test split).
  config.train.evaluate_test = True
  # Steps with a non-finite loss or gradient are skipped; this many in a row stop the run.
  config.train.max_nonfinite_steps = 20
  # Early stopping: end training after this many validations in a row (every eval_every
  # steps) without a validation Dice above the best so far by more than min_delta; the best
  # checkpoint is tested as usual. 0: never stop early. The learning-rate schedule still
  # runs over train.steps, the maximum (as nnU-Net's poly schedule over its fixed budget).
  config.train.patience = 0
  config.train.min_delta = 0.0
  # k-fold cross-validation: train on every fold of the pool (the train and validation
  # splits) but fold k, validate on fold k (data.splits_file says which cases); the test
  # split stays as it is. Unset: the dataset's own train and validation splits.
  config.train.fold = config_dict.placeholder(int)
  config.train.num_folds = 5

  # Whole-image prediction (validation, test, train.evaluate, train.predict): sliding windows
  # of data.patch_size (else of the whole image), train.eval_batch_size windows at a time.
  config.inference = ml_collections.ConfigDict()
  config.inference.overlap = 0.5
  config.inference.blend = "gaussian"  # gaussian | constant
  config.inference.tta = False  # average over mirroring every spatial axis
  # The normalized surface Dice's tolerance: in mm where the images have a spacing
  # (volumes), else in pixels (the report says which).
  config.inference.nsd_tolerance = 1.0
  # At the end of training, choose per class a connected-component post-processing on the
  # validation predictions (nnU-Net's rule: kept only where it raises the validation Dice);
  # saved as workdir/postprocessing.json, reported on test before and after, and applied by
  # train.predict (--nopostprocess: not).
  config.inference.postprocess = True
  # A rule qualifies only if it lowers the mean Dice over the validation images holding the
  # class by at most this much; unset: nnU-Net's choice, which accepts any drop there for
  # fewer false positives in the images without the class.
  config.inference.postprocess_max_dice_drop = config_dict.placeholder(float)

  config.parallel = ml_collections.ConfigDict()
  # Split parameters and optimiser state over the devices (FSDP-style) instead of
  # replicating them: for models too large to hold several times over on each device.
  config.parallel.shard_params = False
  # On a host without accelerators: run the CPU as this many devices, the batch split over
  # them (it must divide train.batch_size). On the project's 2-core CPU, 2 made the default
  # train step about 10% faster than 1 (benchmarks/RESULTS.md).
  config.parallel.cpu_devices = 1

  config.precision = "float32"  # float32 | bfloat16
  return config
