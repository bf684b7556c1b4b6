"""Every env the system touches is made here: Gymnasium ids, ALE Atari games with their
preprocessing and protocols, the actors' vector-env groups. All Atari branching lives here."""
