"""Install manifest for t5forge (Dataflow workers install it with --setup_file ./setup.py)."""

from setuptools import find_packages, setup

CORPUS = [
    "apache-beam>=2.60,<3",
    "google-crc32c>=1.5,<2",
    "langdetect==1.0.9",
    "nltk>=3.9,<4",
    "tldextract>=5,<6",
    "matplotlib>=3.7,<4",
    "tqdm>=4.60",
]
# TensorFlow/seqio/SentencePiece: the vocabularies and objectives stages.
# sentencepiece is pinned: 0.2.3's generated protobuf code needs protobuf 7,
# which TensorFlow 2.21 does not allow.
DATA = [
    "sentencepiece==0.2.1",
    "seqio>=0.0.19",
    "tensorflow>=2.16,<3",
    "tensorflow-datasets>=4.9,<5",
    "cld3-py>=3.1,<4",
]

# The model and trainer: JAX/Flax/optax/orbax only (accelerator machines need nothing else).
MODEL = [
    "jax>=0.4.35",
    "flax>=0.10",
    "optax>=0.2.3",
    "orbax-checkpoint>=0.6",
]

setup(
    name="t5forge",
    version="0.1.0",
    description="From Common Crawl WET files to a validated T5-family pretraining run.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["t5forge", "t5forge.*"]),
    package_data={"t5forge.beam_jobs": ["data/*.wet.gz"]},
    install_requires=CORPUS + DATA + MODEL,
    extras_require={
        # DataflowRunner (and `build`, which stages this package for --setup_file).
        "gcp": ["apache-beam[gcp]>=2.60,<3", "build>=1"],
        # rouge-score: the reference the ROUGE-1 scorer (PEGASUS) is tested against.
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "apache-beam[gcp]>=2.60,<3",
            "rouge-score>=0.1.2",
        ],
    },
    entry_points={"console_scripts": ["t5forge=t5forge.cli:main"]},
)
