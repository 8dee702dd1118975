"""The Lambda mode (on-demand, SnapStart, Managed Instances): decided once in ``mode.py``."""
