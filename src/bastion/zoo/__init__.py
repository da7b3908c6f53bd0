"""Ready-made models: the small DemoCNN for MNIST, its seeded training recipe and its cache."""

from bastion.zoo.cache import DemoModelInfo, demo_info, demo_model, demo_model_path, zoo_cache_dir
from bastion.zoo.demo_cnn import ARCHITECTURE_VERSION, DemoCNN
from bastion.zoo.train import TrainedDemo, accuracy, train_demo

__all__ = [
    "ARCHITECTURE_VERSION",
    "DemoCNN",
    "DemoModelInfo",
    "TrainedDemo",
    "accuracy",
    "demo_info",
    "demo_model",
    "demo_model_path",
    "train_demo",
    "zoo_cache_dir",
]
