"""Training: losses (Stage 1 distillation, Stage 2 emotion), the Stage 1 teacher cache, data and trainers.

Kept free of imports so that ``import vaemotion.training.losses`` stays light; import the submodules directly.
"""
