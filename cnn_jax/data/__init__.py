"""Datasets: raw IDX files, TFDS builders that need no TensorFlow, device-resident splits."""
