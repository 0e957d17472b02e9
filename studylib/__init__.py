"""studylib: the helper package of the image-classifier benchmark study."""
__version__ = "0.1.0"
