"""Autograd building blocks shared by components: bit packing, the fused convolution whose saved
input can be compressed, and the layer protocols the engine talks to (masks, growth capture).

Plugins import these from the core, never from another plugin, so a compressor and a model
transform can meet in one layer without knowing each other.
"""
