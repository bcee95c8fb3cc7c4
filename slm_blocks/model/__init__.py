"""The model: the spec (typed JSON data) and its validation, the block modules, the transformers model built
from a spec, the estimate (parameters, FLOPs, memory) computed without building anything, the presets, and
generation. Imports only torch and transformers, never the training, sharing or UI code."""
