"""jaxrec: JAX/Flax reimplementations of recommender-system papers.

Install for CPU:  pip install -e .[test]
Install for GPU:  pip install -e .[cuda12,test]
The Makefile does all of this (plus the offline data/weight packages) for you.
"""
from setuptools import find_packages, setup

JAX_VERSION = "0.12.0.1"

setup(
    name="jaxrec",
    version="0.1.0",
    description="Recommender-system papers (IISAN, SQN/SA2C, PRL, SMORL, LEA, PERSOMA, "
    "GazeReward, latent intent, PCRec) reimplemented in JAX/Flax",
    packages=find_packages(include=["jaxrec", "jaxrec.*"]),
    python_requires=">=3.12",
    install_requires=[
        f"jax=={JAX_VERSION}",
        f"jaxlib=={JAX_VERSION}",
        "flax==0.12.12",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "absl-py==2.5.1",
        "ml-collections==1.1.0",
        "transformers==4.57.6",  # last release with Flax models (test reference) + tokenizers
        "safetensors",
        "tensorflow-datasets==4.9.10",  # used without TensorFlow
        "array-record==0.8.6",
        "grain==0.2.18",
        "pillow",
        "tqdm",
        "pyarrow",  # vectorised raw-file parsing in the readers
        "importlib_resources",  # tensorflow-datasets imports it when building datasets
        "numpy",
        "matplotlib==3.11.2",  # the notebooks in colabs/ plot with it
        "wordfreq==3.1.1",  # GazeReward's reading-time proxy (bundled frequency lists, offline)
    ],
    extras_require={
        "cuda12": [f"jax[cuda12]=={JAX_VERSION}"],
        "test": ["pytest", "pytest-xdist", "chex==0.1.92",
                 # executing colabs/*.ipynb in smoke mode
                 "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"],
    },
)
