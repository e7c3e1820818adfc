"""Scripts for the GPU checks on a lent device machine (gpu/README.md); a regular package so that
``--adapter gpu.adapters:...`` finds this folder, not some installed module named gpu."""
