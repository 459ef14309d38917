"""The KServe / Triton v2 inference protocol: generated stubs (proto package `inference`)."""
