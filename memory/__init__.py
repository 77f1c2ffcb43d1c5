"""Memory: the Chroma client factory, embedders, the image index and conversation stores.

Importing this package is light: heavy libraries load inside the functions that need them.
"""
