"""Command modules of the ``cpd`` CLI, one per subcommand."""
