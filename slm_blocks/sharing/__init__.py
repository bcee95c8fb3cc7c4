"""Sharing: the map to native transformers families, export (verified in a fresh process), the model card,
import of exported or native folders, and the Hub push. Builds on `slm_blocks.model` and `slm_blocks.training`."""
