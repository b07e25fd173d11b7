"""What a tokenizer is: the interface, the file format, encoding and the feature sources it needs at encode time.

A tokenizer maps each image patch to a discrete id in [0, K). Fitting one (K-means, VQ-VAE training, encoders)
sits above the engine, in kmim.fit, which also holds the registry of tokenizer kinds.
"""

from kmim.tokenizers.base import MetaLike, Tokenizer, TokenizerMeta, as_meta, read_tokenizer_file, to_blob, upgrade
from kmim.tokenizers.kmeans import KMeansTokenizer
from kmim.tokenizers.oracle import ClassWiseTokenizer, CrossClassTokenizer, RandomTokenizer
from kmim.tokenizers.sources import SOURCES, EncoderSource, FeatureSource, HOGSource, PixelSource
from kmim.tokenizers.vq import VQVAE, VQTokenizer

__all__ = [
    "SOURCES",
    "VQVAE",
    "ClassWiseTokenizer",
    "CrossClassTokenizer",
    "EncoderSource",
    "FeatureSource",
    "HOGSource",
    "KMeansTokenizer",
    "MetaLike",
    "PixelSource",
    "RandomTokenizer",
    "Tokenizer",
    "TokenizerMeta",
    "VQTokenizer",
    "as_meta",
    "read_tokenizer_file",
    "to_blob",
    "upgrade",
]
