"""The evaluator component, episode running, and the teacher-normalized score with its CI."""
