"""Subcommands of the ``captum-clip`` CLI (one module each, see ``captum_clip.cli``)."""
