"""ANOM: adaptive noise, clipping and learning rate between DP-SGD epochs.

protocol (what the worker and a tuner exchange), tuners (fixed, rule, bayes), registry (by name),
signals (the noisy statistics a tuner may read and what each costs).
"""
