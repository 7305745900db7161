"""Bounded, safe decoding of uploaded bytes into a model's input arrays."""

from service.preprocess.audio import decode_audio
from service.preprocess.image import decode_image
from service.preprocess.preprocessor import Preprocessor
from service.preprocess.sniff import sniff
from service.preprocess.text import TextEncoder

__all__ = ["Preprocessor", "TextEncoder", "decode_audio", "decode_image", "sniff"]
