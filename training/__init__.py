"""Full-precision pretraining beside the package: data readers, synthetic data, losses, the loop, evaluation.

`xvlm_edge` never imports this tree; it imports `xvlm_edge`. Modules are imported one by one
(`training.data`, `training.synthetic`, ...), so this file stays empty on purpose.
"""
