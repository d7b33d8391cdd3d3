"""Callbacks for ``vizoo predict``: write one CSV row per image."""
from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from vizoo.utils import atomic_path


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
