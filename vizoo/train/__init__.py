"""Training through Lightning: the ``ImageClassifier`` LightningModule and the ``vizoo`` Lightning CLI."""
from vizoo.train.module import ImageClassifier

__all__ = ["ImageClassifier"]
