"""vae3d: a causal 3D convolutional video VAE with streaming encode and decode."""
