"""ANOM: adaptive noise, clipping and learning rate between DP-SGD epochs (see ppmlops.tuning.tuners)."""
