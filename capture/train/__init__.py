"""DECA training: the coarse stage (E_flame) and the detail stage (E_detail, D_detail) with the paper's losses.

    python -m capture.train make-dataset DIR        # tiny rendered dataset (demo pack)
    python -m capture.train check DIR               # validate a dataset folder
    python -m capture.train pretrain --data DIR --out RUN_PRE      # landmarks only (DECA's first step)
    python -m capture.train coarse --data DIR --out RUN_COARSE [--init RUN_PRE]
    python -m capture.train detail --data DIR --out RUN_DETAIL --init RUN_COARSE

Each run writes RUN/pack/ (a complete model pack whose deca_model.tar holds the trained weights),
RUN/<stage>_log.csv and RUN/<stage>_train_state.pt (optimiser and step, for --resume).
"""
from .config import ConfigError, load_config
from .dataset import DatasetError, FaceDataset, validate_dataset

__all__ = ["ConfigError", "DatasetError", "FaceDataset", "load_config", "validate_dataset"]
