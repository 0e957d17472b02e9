"""Figures and tables the notebooks show, one module per notebook: records or frames in, figures or frames out."""
