"""jaxrec: recommender-system papers (IISAN / IISAN-Versa, SQN / SAC, SNQN / SA2C, PRL, SMORL,
LEA, PERSOMA, GazeReward, a latent-intent VAE, PCRec) reimplemented in JAX / Flax on one
method contract. The README is the map; ``python -m jaxrec.main --help`` the entry point."""

__version__ = "0.2.0"
