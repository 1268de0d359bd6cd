"""Who decides whether a node takes work: nobody but us, Slurm, or
Kubernetes; one interface, one adapter each."""
