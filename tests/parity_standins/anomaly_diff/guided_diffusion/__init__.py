"""CI stand-in for VandyLu/anomaly_diff's guided_diffusion package (see ../README.md)."""
