"""Pure segmentation code: volumes, supervoxels, graphs and metrics. Knows nothing of the web."""
