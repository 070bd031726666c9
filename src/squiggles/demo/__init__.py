"""The main job: standard and robust models side by side, the squiggles figure, wormholes, one HTML report."""

from squiggles.demo.run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
