"""Math grading: answer extraction, exact numbers, LaTeX normalisation, answer structures,
and the sympy check in a child process (``grading`` is the entry point)."""
