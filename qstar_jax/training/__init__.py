"""Training loops over the policy's own samples: ``star`` (STaR self-training)."""
