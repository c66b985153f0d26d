"""Safe model loading: byte sniffing, trust tiers, architectures, preprocessing, handles."""

from explainkit.loading.handle import CAPABILITIES, ModelHandle
from explainkit.loading.loaders import file_sha256, load_model, wrap
from explainkit.loading.preprocessing import Preprocessing
from explainkit.loading.sniff import ModelFormat, sniff_format

__all__ = [
    "CAPABILITIES",
    "ModelFormat",
    "ModelHandle",
    "Preprocessing",
    "file_sha256",
    "load_model",
    "sniff_format",
    "wrap",
]
