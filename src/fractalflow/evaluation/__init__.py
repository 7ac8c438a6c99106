"""The yardstick: FD-EffNetL0, k-NN precision/recall, prompt alignment and hallucination
rate, classifier accuracy for class-labelled sets, and ``evaluate`` that runs them all."""
