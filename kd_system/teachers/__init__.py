"""Where teachers come from: training with RLlib and its export to our format; shipped teachers
live beside the code, one folder each with a model card."""
