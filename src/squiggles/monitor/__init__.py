"""Monitoring: the long tail (MNIST-C corruptions), inputs a model should not trust (out-of-distribution
detectors) and whether its confidence means anything (calibration).

Example:
    >>> from squiggles.monitor import fit_detector, corrupt, fit_temperature       # doctest: +SKIP
    >>> detector = fit_detector(model, train, method="ensemble"); detector.score(x)
"""

from squiggles.monitor.calibration import Scaled, fit_temperature
from squiggles.monitor.corruptions import CORRUPTIONS, corrupt, corruption_suite
from squiggles.monitor.metrics import calibration, detection
from squiggles.monitor.ood import METHODS, Detector, fit_detector, make_detector

__all__ = ["CORRUPTIONS", "METHODS", "Detector", "Scaled", "calibration", "corrupt", "corruption_suite", "detection",
           "fit_detector", "fit_temperature", "make_detector"]
