"""hopscotch-export: skip the attention blocks a task does not need and ship a GGUF.

The package reads as the pipeline: ``search/`` writes a :mod:`plan`, ``converters/``
turns source + plan into a ``deci`` GGUF, ``verify/`` measures it in llama.cpp.
``sources/`` feeds both search and convert.
"""

__version__ = "0.1.0"
