"""Unit tests of the adapters (mapper, codecs)."""
