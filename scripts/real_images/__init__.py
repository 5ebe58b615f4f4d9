"""The parts of scripts/collect_real_images.py: where real images come from (`wheels`, `debian`,
`rendered`, each a list of `candidates.Candidate`), how one becomes a file the service accepts
(`normalise`), and how the collection is written, split into halves and summarised (`collection`)."""
