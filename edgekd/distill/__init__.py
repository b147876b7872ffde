"""Data-free GAN distillation: generator, losses, hooks, discriminator, presets and one loop."""
