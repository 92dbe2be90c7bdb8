"""Learned models: the SAM2 prompt backend (and, to come, FGNet and the 3D U-Net student)."""
