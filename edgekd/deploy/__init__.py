"""Export, quantization, TensorRT (optional) and deployment bundles."""
