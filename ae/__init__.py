"""Everything around the training loop of ``ae_helpers``: saved runs, metrics, figures, the latent
explorer and per-question analyses, one module each. See ``ae_helpers``' docstring for the map."""
