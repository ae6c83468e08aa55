"""longcat-convert: LongCat-Video checkpoint conversion and numerical parity with FastVideo."""

__version__ = "0.1.0"
