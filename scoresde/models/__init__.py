"""Models: the score model and its preconditioners, conditioning, the networks, autoencoders, the
noise-conditional classifier, guidance wrappers, EMA and the token models."""
