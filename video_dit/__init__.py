"""video_dit: a diffusion transformer over spacetime patches, trained with rectified flow."""
