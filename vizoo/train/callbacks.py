"""Callbacks of the Lightning CLI: ``last.ckpt`` after every epoch (written atomically), the random number
generators' state in every checkpoint (so a resumed run continues exactly), and ``vizoo predict``'s CSV writer
(one row per image)."""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, Checkpoint

from vizoo.utils import atomic_path


class LastCheckpoint(Checkpoint):
    """Writes ``<checkpoints>/last.ckpt`` at the end of every training epoch, through a temporary file and a rename.

    Lightning's ``ModelCheckpoint(save_last=True)`` (2.6) refreshes ``last.ckpt`` only in epochs that also save a
    top-k checkpoint, so after a kill it can be several epochs old; and it writes in place, so a kill during the
    write leaves a damaged file. This callback does neither: the newest complete epoch is always there.

    As a ``Checkpoint`` it runs after the other callbacks, and like ``ModelCheckpoint`` it computes the epoch's
    metrics on every rank before saving, so under DDP every rank enters the same collectives in the same order.
    """

    FILENAME = "last.ckpt"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.callback_metrics  # noqa: B018  (syncs the epoch's metrics on all ranks, as rank 0's progress bar does)
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        folder = Path(dirpath or os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints"))
        tmp = folder / f".{self.FILENAME}.tmp"
        trainer.save_checkpoint(tmp)  # collective under DDP: rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, folder / self.FILENAME)
        trainer.strategy.barrier("last_checkpoint")


class RngState(Callback):
    """Saves the Python, NumPy, torch CPU and CUDA generator states in each checkpoint and restores them on resume.

    Lightning restores the step, epoch, optimizer and schedule but not these generators, so without this a resumed
    run shuffles, augments and drops out differently from the run it continues.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {  # tensors and plain values only: readable with torch.load(weights_only=True)
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        random.setstate(states["python"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])


class PredictionWriter(BasePredictionWriter):
    """Writes ``path,class_index,class_name,confidence`` for every predicted image to ``output_file``.

    The file is written once, atomically, after the whole prediction epoch (one file per rank under DDP,
    ``predictions.rank1.csv`` and so on).
    """

    def __init__(self, output_file: str = "predictions.csv"):
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices):
        files = trainer.datamodule.predict_files
        names = pl_module.hparams.get("class_names")
        path = Path(self.output_file)
        if trainer.world_size > 1 and trainer.global_rank > 0:
            path = path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "class_index", "class_name", "confidence"])
            for batch in predictions:
                for i, pred, conf in zip(batch["index"].tolist(), batch["pred"].tolist(), batch["confidence"].tolist()):
                    name = names[pred] if names else str(pred)
                    writer.writerow([str(files.paths[i]), pred, name, f"{conf:.6f}"])
        print(f"wrote {path}")
