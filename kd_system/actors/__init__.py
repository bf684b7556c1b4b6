"""The actor side: the collector component, its labelling loop (envs + frozen teacher), who acts
(teacher, student, mixed), and lookahead labels."""
