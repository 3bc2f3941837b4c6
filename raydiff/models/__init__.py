"""Diffusion networks: UNet presets, checkpoint folders, the latent autoencoder."""
