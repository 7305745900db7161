"""Bounded, safe decoding of uploaded bytes into a model's input arrays."""

from fusionserve.service.preprocess.audio import decode_audio
from fusionserve.service.preprocess.image import decode_image
from fusionserve.service.preprocess.preprocessor import Preprocessor
from fusionserve.service.preprocess.sniff import sniff
from fusionserve.service.preprocess.text import TextEncoder

__all__ = ["Preprocessor", "TextEncoder", "decode_audio", "decode_image", "sniff"]
