"""Former home of the serving fast path, now split by concern; kept so old imports still work.

New code imports from the package root (`from promptclip import ImageRunner`), which takes
them from `promptclip.graphs` (CUDA graphs) and `promptclip.device_decode` (device JPEG
decode + preprocess).
"""

from .device_decode import (
           DeviceJpegPreprocessor,
           decode_jpeg_batch_gpu,
           device_jpeg_preprocessor,
           preprocess_batch,
)
from .graphs import DEFAULT_BUCKETS, ImageRunner

__all__ = ["DEFAULT_BUCKETS", "DeviceJpegPreprocessor", "ImageRunner", "decode_jpeg_batch_gpu",
           "device_jpeg_preprocessor", "preprocess_batch"]
