"""Grow small models from existing ones: start from trained weights (fine-tune), learn from a teacher
(distill), and prune a trained model into a smaller one (then heal it by distilling from the original).

`source.py` finds a model (a run, an exported or native transformers folder, a Hub id) and checks its size,
`prepare.py` prepares runs that start from one or learn from one (the training driver calls it),
`prune.py` makes a smaller run from a trained one, `compare.py` measures before and after. Builds on
`slm_blocks.model`, `slm_blocks.training` and `slm_blocks.sharing`; nothing here imports the UI.
"""
