"""Implementations of the built-in components. The plugin modules one level up only register
them (as ``"module:attribute"`` factories), so listing plugins never imports torch."""
