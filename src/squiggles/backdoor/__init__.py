"""Backdoors: plant one (BadNets), find the poisoned training points (spectral signatures, activation clustering),
find the backdoor from the model alone (Neural Cleanse), and repair the model (retrain without the suspects, or
unlearn the reversed trigger).

Example:
    >>> import torch
    >>> from squiggles.backdoor import Pattern, LabelMap, poison
    >>> x, y = torch.rand(50, 1, 8, 8), torch.arange(50) % 10
    >>> len(poison(x, y, Pattern(), LabelMap("all-to-one", 0), 0.2, num_classes=10).indices)
    9

`squiggles.backdoor.scan` and `squiggles.backdoor.repair` (which train and evaluate models) are imported on use.
"""

from squiggles.backdoor.cleanse import CleanseConfig, CleanseResult, anomaly_index, neural_cleanse
from squiggles.backdoor.detect import Detection, activation_clustering, precision_recall, spectral_signatures
from squiggles.backdoor.poison import PoisonSpec, attack_success_rate, poison, poison_dataset
from squiggles.backdoor.triggers import Blend, LabelMap, Pattern, Pixel, Stamp, Trigger, make_trigger

__all__ = ["Blend", "CleanseConfig", "CleanseResult", "Detection", "LabelMap", "Pattern", "Pixel", "PoisonSpec",
           "Stamp", "Trigger", "activation_clustering", "anomaly_index", "attack_success_rate", "make_trigger",
           "neural_cleanse", "poison", "poison_dataset", "precision_recall", "spectral_signatures"]
