"""Self-improvement loops: selection rules, the shared generate -> score -> select -> learn skeleton,
STaR rationalisation, a DPO-trained verifier and preference-step glue."""
