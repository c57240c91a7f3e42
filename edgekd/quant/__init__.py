"""Quantization: calibration recipes and post-training quantization per runtime."""
