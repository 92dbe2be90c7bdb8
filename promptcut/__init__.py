"""promptcut: prompt-driven graph-cut proofreading of vEM neuron segmentations in neuroglancer."""

__version__ = "0.1.0"
