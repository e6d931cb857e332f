"""vox2vox: 3D conditional GAN (Vox2Vox) segmentation of CT and MRI volumes."""

__version__ = "0.1.0"
