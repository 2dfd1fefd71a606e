"""Scoring generators: FID and KID on a test split with a feature-extractor component, cached real features.

Belongs here: anything that turns trained generators into numbers, during training or afterwards.
"""
