"""Gaze scanpath prediction in visual search: OAT, scanpath data and formats, a synthetic visual-search world,
metrics, baselines, training and plots."""
from vizoo.scanpath.data import Scene, load_scenes, read_coco_search18, read_oat, save_scenes, split_scenes
from vizoo.scanpath.model import OAT
from vizoo.scanpath.synthetic import GuidedSearch, make_scenes
from vizoo.scanpath.train import ScanpathDataModule, ScanpathModule

__all__ = [
    "OAT",
    "GuidedSearch",
    "ScanpathDataModule",
    "ScanpathModule",
    "Scene",
    "load_scenes",
    "make_scenes",
    "read_coco_search18",
    "read_oat",
    "save_scenes",
    "split_scenes",
]
