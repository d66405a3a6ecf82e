"""The output contract: where rows and control state live (layout.py), and how the output is opened."""
