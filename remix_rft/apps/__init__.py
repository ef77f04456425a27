"""Applications: command line, evaluation, comparison and plots."""
