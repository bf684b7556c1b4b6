"""The learner component: distillation losses, the loss-spec parser, and the prefetcher that keeps
sampled batches ready."""
