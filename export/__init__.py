"""The export toolchain (needs torch): UNet, training, the pipeline graph, ONNX export and
parity. It writes bundles; `pathwatch.edge` reads them."""
