"""ultraseg: U-Net segmentation of 2D ultrasound images."""
__version__ = "0.1.0"
